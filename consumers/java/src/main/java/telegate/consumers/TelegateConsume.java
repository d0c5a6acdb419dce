package telegate.consumers;

import com.google.protobuf.util.JsonFormat;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import telegate.v1.Frame.VehicleFrame;

/**
 * Reads one of telegate's service topics the way a backend team would: kafka-clients for Kafka,
 * and the classes protoc generated from telegate's proto/ folder at build time for the value.
 *
 * <pre>java -jar telegate-consume.jar --bootstrap HOST:PORT --topic TOPIC [--max N] [--timeout S]</pre>
 *
 * <p>Each record becomes one JSON line on stdout: the topic, the key, the purpose, legal basis,
 * consent and subject form from the headers, and the frame kind, VIN (where the purpose may see
 * it), sequence number and capture time from the value.
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
    }
  }

  private static String header(ConsumerRecord<byte[], byte[]> r, String name) {
    Header h = r.headers().lastHeader(name);
    return h == null || h.value() == null ? null : new String(h.value(), StandardCharsets.UTF_8);
  }

  private static String line(ConsumerRecord<byte[], byte[]> r) throws Exception {
    VehicleFrame frame;
    if ("json".equals(header(r, "telegate-encoding"))) {
      VehicleFrame.Builder b = VehicleFrame.newBuilder();
      JsonFormat.parser().merge(new String(r.value(), StandardCharsets.UTF_8), b);
      frame = b.build();
    } else {
      frame = VehicleFrame.parseFrom(r.value());
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
