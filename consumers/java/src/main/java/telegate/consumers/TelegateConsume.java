package telegate.consumers;

import com.google.protobuf.Descriptors.Descriptor;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.protobuf.util.JsonFormat;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import telegate.v1.Frame;
import telegate.v1.Frame.VehicleFrame;

/**
 * Reads one of telegate's service topics the way a backend team would: kafka-clients for Kafka,
 * and the classes protoc generated from telegate's proto/ folder at build time for the value.
 *
 * <pre>java -jar telegate-consume.jar --bootstrap HOST:PORT --topic TOPIC [--max N] [--timeout S]</pre>
 *
 * <p>Each record becomes one JSON line on stdout: the topic, the key, the purpose, legal basis,
 * consent and subject form from the headers, the value's encoding (the telegate-encoding header)
 * and schema id, and the frame kind, VIN (where the purpose may see it), sequence number and
 * capture time from the value.
 *
 * <p>The telegate-encoding header says how the value is written: "protobuf" (a VehicleFrame),
 * "json" (its proto3-JSON form) or "confluent-protobuf": the Confluent wire format, that is the
 * magic byte 0x00, the schema id (4 bytes, big-endian), the message indexes (a zigzag varint
 * count, then that many zigzag varints; a count of 0 stands for [0], the first message of the
 * schema's file), then the VehicleFrame. Such a value is unframed here, without a registry: the
 * indexes must point at telegate.v1.VehicleFrame in frame.proto. schema_id is the id from the
 * framing, null for the other encodings.
 *
 * <p>A record that cannot be read (a bad framing, a value that does not parse) ends the run: a
 * message on stderr, exit status 1.
 */
public final class TelegateConsume {
  private TelegateConsume() {}

  public static void main(String[] args) throws Exception {
    Map<String, String> a = new HashMap<>(Map.of("--max", "0", "--timeout", "30"));
    for (int i = 0; i + 1 < args.length; i += 2) {
      a.put(args[i], args[i + 1]);
    }
    if (!a.containsKey("--bootstrap") || !a.containsKey("--topic")) {
      System.err.println("usage: --bootstrap HOST:PORT --topic TOPIC [--max N] [--timeout S]");
      System.exit(2);
    }
    int max = Integer.parseInt(a.get("--max"));
    Instant deadline = Instant.now().plusSeconds(Long.parseLong(a.get("--timeout")));
    Properties p = new Properties();
    p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, a.get("--bootstrap"));
    p.put(ConsumerConfig.GROUP_ID_CONFIG, "telegate-java-" + ProcessHandle.current().pid());
    p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
    p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
    p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
    int seen = 0;
    try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(p)) {
      consumer.subscribe(List.of(a.get("--topic")));
      while (Instant.now().isBefore(deadline) && (max == 0 || seen < max)) {
        for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(500))) {
          System.out.println(line(r));
          seen++;
        }
      }
    } catch (BadRecordException e) {
      // The consumer is closed by now.
      System.err.println("telegate-consume: " + e.getMessage());
      System.exit(1);
    }
  }

  /** A record this consumer cannot read: the run ends with this message. */
  static final class BadRecordException extends Exception {
    private static final long serialVersionUID = 1L;

    BadRecordException(String message) {
      super(message);
    }
  }

  /** A value in the Confluent wire format, taken apart. */
  record Framed(long schemaId, List<Integer> indexes, byte[] payload) {}

  /** Magic byte, schema id, message indexes, protobuf: see the class comment. */
  static Framed unframe(byte[] value) throws BadRecordException {
    if (value == null || value.length < 6) {
      throw new BadRecordException(
          (value == null ? "no value" : value.length + " bytes")
              + ": too short for the Confluent framing (6 bytes at least)");
    }
    if (value[0] != 0) {
      throw new BadRecordException(String.format("magic byte 0x%02x, not 0x00", value[0] & 0xff));
    }
    long schemaId =
        ((value[1] & 0xffL) << 24)
            | ((value[2] & 0xffL) << 16)
            | ((value[3] & 0xffL) << 8)
            | (value[4] & 0xffL);
    int[] pos = {5};
    long count = zigzagVarint(value, pos);
    // Every index takes one byte at least.
    if (count < 0 || count > value.length - pos[0]) {
      throw new BadRecordException(
          "impossible message index count " + count + " (" + (value.length - pos[0])
              + " bytes left)");
    }
    List<Integer> indexes = new ArrayList<>();
    if (count == 0) {
      indexes.add(0);
    }
    for (long i = 0; i < count; i++) {
      long index = zigzagVarint(value, pos);
      if (index < 0 || index > Integer.MAX_VALUE) {
        throw new BadRecordException("impossible message index " + index);
      }
      indexes.add((int) index);
    }
    return new Framed(schemaId, indexes, Arrays.copyOfRange(value, pos[0], value.length));
  }

  /** The zigzag-encoded varint at data[pos[0]]; pos[0] moves past it. */
  private static long zigzagVarint(byte[] data, int[] pos) throws BadRecordException {
    long raw = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos[0] >= data.length) {
        throw new BadRecordException("the framing ends inside a message index");
      }
      byte b = data[pos[0]++];
      raw |= (long) (b & 0x7f) << shift;
      if ((b & 0x80) == 0) {
        return (raw >>> 1) ^ -(raw & 1);
      }
    }
    throw new BadRecordException("a message index is longer than 10 bytes");
  }

  /**
   * Full name of the message the indexes point at in frame.proto: [i] is the file's i-th message,
   * [i, j] the j-th message nested in that one, and so on.
   */
  private static String messageAt(List<Integer> indexes) throws BadRecordException {
    List<Descriptor> messages = Frame.getDescriptor().getMessageTypes();
    Descriptor d = null;
    for (int index : indexes) {
      if (index >= messages.size()) {
        throw new BadRecordException(
            "message indexes " + indexes + " point past the messages of frame.proto");
      }
      d = messages.get(index);
      messages = d.getNestedTypes();
    }
    return d.getFullName();
  }

  private static BadRecordException bad(ConsumerRecord<byte[], byte[]> r, String message) {
    return new BadRecordException(
        r.topic() + " partition " + r.partition() + " offset " + r.offset() + ": " + message);
  }

  private static String header(ConsumerRecord<byte[], byte[]> r, String name) {
    Header h = r.headers().lastHeader(name);
    return h == null || h.value() == null ? null : new String(h.value(), StandardCharsets.UTF_8);
  }

  private static String line(ConsumerRecord<byte[], byte[]> r) throws BadRecordException {
    String encoding = header(r, "telegate-encoding");
    Long schemaId = null;
    VehicleFrame frame;
    try {
      if ("confluent-protobuf".equals(encoding)) {
        Framed f = unframe(r.value());
        String name = messageAt(f.indexes());
        String want = VehicleFrame.getDescriptor().getFullName();
        if (!name.equals(want)) {
          throw new BadRecordException(
              "message indexes " + f.indexes() + " name " + name + ", not " + want);
        }
        schemaId = f.schemaId();
        frame = VehicleFrame.parseFrom(f.payload());
      } else if ("json".equals(encoding)) {
        VehicleFrame.Builder b = VehicleFrame.newBuilder();
        byte[] v = r.value() == null ? new byte[0] : r.value();
        JsonFormat.parser().merge(new String(v, StandardCharsets.UTF_8), b);
        frame = b.build();
      } else {
        frame = VehicleFrame.parseFrom(r.value() == null ? new byte[0] : r.value());
      }
    } catch (InvalidProtocolBufferException e) {
      String what = encoding == null ? "protobuf" : encoding;
      throw bad(r, what + " value does not parse: " + e.getMessage());
    } catch (BadRecordException e) {
      throw bad(r, e.getMessage());
    }
    String kind =
        frame.getBodyCase() == VehicleFrame.BodyCase.BODY_NOT_SET
            ? null
            : frame.getBodyCase().name().toLowerCase();
    StringBuilder s = new StringBuilder("{");
    field(s, "topic", r.topic());
    field(s, "key", r.key() == null ? null : new String(r.key(), StandardCharsets.UTF_8));
    field(s, "purpose", header(r, "telegate-purpose"));
    field(s, "legal_basis", header(r, "telegate-legal-basis"));
    field(s, "consent", header(r, "telegate-consent"));
    field(s, "subject", header(r, "telegate-subject"));
    field(s, "encoding", encoding);
    s.append("\"schema_id\":").append(schemaId == null ? "null" : schemaId.toString()).append(',');
    field(s, "kind", kind);
    field(s, "vin", frame.getVin());
    s.append("\"seq\":").append(Long.toUnsignedString(frame.getSeq())).append(',');
    s.append("\"captured_at_ms\":").append(frame.getCapturedAtMs()).append('}');
    return s.toString();
  }

  /** One "name":value, pair of the line; strings escaped as JSON requires. */
  private static void field(StringBuilder s, String name, String value) {
    s.append('"').append(name).append("\":");
    if (value == null) {
      s.append("null,");
      return;
    }
    s.append('"');
    for (char c : value.toCharArray()) {
      switch (c) {
        case '"' -> s.append("\\\"");
        case '\\' -> s.append("\\\\");
        default -> {
          if (c < 0x20) {
            s.append(String.format("\\u%04x", (int) c));
          } else {
            s.append(c);
          }
        }
      }
    }
    s.append("\",");
  }
}
