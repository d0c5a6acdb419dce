package telegate.interop;

import java.io.ByteArrayOutputStream;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyFactory;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.ArrayList;
import java.util.Base64;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import javax.net.ssl.KeyManager;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

/**
 * An MQTT client on Eclipse Paho Java (mqttv3 for MQTT 3.1.1, mqttv5 for MQTT 5) with the
 * command line and the JSON lines of interop/README.md.
 */
public final class PahoClient {

    // ---------------------------------------------------------------------------------------
    // Output: one JSON object per line, flushed at once (Paho's callbacks run on its threads).

    static synchronized void emit(String json) {
        System.out.println(json);
        System.out.flush();
    }

    static String str(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : (s == null ? "" : s).toCharArray()) {
            switch (c) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                default -> {
                    if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
                    else b.append(c);
                }
            }
        }
        return b.append('"').toString();
    }

    /** A failure's message with its cause, as Paho wraps the interesting part (TLS, I/O). */
    static String describe(Throwable e) {
        if (e == null) return "unknown";
        String s = e.toString();
        for (Throwable c = e.getCause(); c != null && c != c.getCause(); c = c.getCause()) {
            if (!s.contains(c.toString())) s += ": " + c;
        }
        return s;
    }

    static void exit(int code) {
        System.out.flush();
        System.err.flush();
        // halt, not exit: nothing of Paho's threads or timers may keep the process alive.
        Runtime.getRuntime().halt(code);
    }

    // ---------------------------------------------------------------------------------------
    // The run's state, written by Paho's callback threads; guarded by LOCK, which is notified
    // on every change.

    static final Object LOCK = new Object();
    static boolean up, failed, closing, reconnect;
    static int acked, refused, written, losses, handed;
    /** The run's QoS: every publish of a run has it (what a store restores is QoS 1). */
    static int runQos = 1;
    /** --publish: the frames a PUBACK acknowledged or refused, by index in the file. */
    static boolean[] settled = new boolean[0];
    /** --publish: frames whose publish failed in the library, to be handed again. */
    static final java.util.ArrayDeque<Integer> AGAIN = new java.util.ArrayDeque<>();

    // Each event is printed under LOCK before the change is announced, so that the main thread
    // cannot print "done" (or exit) ahead of the event that ended its wait.

    static void connected(boolean sessionPresent) {
        synchronized (LOCK) {
            emit("{\"event\":\"connected\",\"session_present\":" + sessionPresent + "}");
            up = true;
            LOCK.notifyAll();
        }
    }

    static void connectFailed(String reason) {
        synchronized (LOCK) {
            emit("{\"event\":\"connect_failed\",\"reason\":" + str(reason) + "}");
            failed = true;
            LOCK.notifyAll();
        }
    }

    static void lost(String reason) {
        synchronized (LOCK) {
            // Paho also reports a connection that never came up, or our own DISCONNECT.
            if (!up || closing) return;
            emit("{\"event\":\"lost\",\"reason\":" + str(reason) + "}");
            up = false;
            losses++;
            LOCK.notifyAll();
        }
    }

    /**
     * A publish completed: QoS 1 acknowledged by its PUBACK (with a negative MQTT 5 code: ok
     * false), QoS 0 written. frame: its index in the file, null for one the store restored.
     */
    static void delivered(Object frame, boolean ok, String detail) {
        synchronized (LOCK) {
            if (frame instanceof Integer i) {
                if (settled[i]) return; // published twice: its first PUBACK counted
                settled[i] = true;
            }
            if (runQos == 0) {
                written++;
            } else if (ok) {
                acked++;
                emit("{\"event\":\"acked\",\"count\":" + acked + "}");
            } else {
                refused++;
                emit("{\"event\":\"error\",\"message\":" + str("PUBACK refused: " + detail) + "}");
            }
            LOCK.notifyAll();
        }
    }

    /** The library gave up on a publish (its token failed): the frame is handed again. */
    static void failed(Object frame, Throwable e) {
        synchronized (LOCK) {
            if (!(frame instanceof Integer i) || settled[i] || closing) return;
            System.err.println("paho-java: frame " + (i + 1) + " failed (" + describe(e) + "); handing it again");
            AGAIN.add(i);
            LOCK.notifyAll();
        }
    }

    /** Waits for a change of the state until the deadline; false once it has passed. */
    static boolean await(long deadline, long atMostMs) throws InterruptedException {
        long left = deadline - System.currentTimeMillis();
        // Without automatic reconnect a lost connection ends the wait: nothing more can come.
        if (left <= 0 || (!reconnect && losses > 0)) return false;
        LOCK.wait(Math.min(left, atMostMs));
        return true;
    }

    // ---------------------------------------------------------------------------------------
    // What the run needs of either Paho client.

    /** The library refused a publish for now: its window is full, or it is (re)connecting. */
    static final class Busy extends Exception {}

    interface Mqtt {
        /** Starts connecting; the outcome arrives as connected() or connectFailed(). */
        void start() throws Exception;

        /**
         * Hands one publish to the library, without waiting for it; frame (its index in the
         * file) comes back with its PUBACK, delivered(), or its failure, failed(). Once this
         * returns, the library holds the publish (QoS 1: in its persistence, on disk with
         * --store).
         */
        void send(String topic, byte[] payload, int qos, int frame) throws Busy, Exception;

        /** Subscribes and returns the granted codes. */
        int[] grant(String filter, int qos, long waitMs) throws Exception;

        /** The publishes restored from the store, which the library sends again once connected. */
        int restored();

        /** A polite DISCONNECT, briefly. */
        void end();
    }

    // ---------------------------------------------------------------------------------------
    // Options

    static final class Usage extends Exception {
        Usage(String m) {
            super(m);
        }
    }

    static final Set<String> VALUED = Set.of("host", "port", "ca", "cert", "key", "client-id",
            "mqtt", "keep-alive", "clean", "store", "timeout", "reconnect", "publish", "topic",
            "qos", "subscribe", "idle");

    static Map<String, String> parse(String[] args) throws Usage {
        Map<String, String> o = new HashMap<>();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (a.equals("--resume")) {
                o.put("resume", "true");
            } else if (a.startsWith("--") && VALUED.contains(a.substring(2))) {
                if (i + 1 >= args.length) throw new Usage(a + " needs a value");
                o.put(a.substring(2), args[++i]);
            } else {
                throw new Usage("unknown argument " + a);
            }
        }
        for (String k : List.of("host", "port", "ca", "client-id")) {
            if (!o.containsKey(k)) throw new Usage("--" + k + " is required");
        }
        if (o.containsKey("cert") != o.containsKey("key")) throw new Usage("--cert and --key go together");
        int actions = 0;
        for (String k : List.of("publish", "resume", "subscribe", "idle")) if (o.containsKey(k)) actions++;
        if (actions != 1) throw new Usage("one action: --publish, --resume, --subscribe or --idle");
        if (o.containsKey("publish") && !o.containsKey("topic")) throw new Usage("--publish needs --topic");
        if (o.containsKey("resume")) {
            if (!o.containsKey("store")) throw new Usage("--resume needs --store");
            o.put("clean", "false");
        }
        return o;
    }

    static int number(Map<String, String> o, String k, int dflt, int min, int max) throws Usage {
        String v = o.get(k);
        if (v == null) return dflt;
        try {
            int n = Integer.parseInt(v);
            if (n < min || n > max) throw new NumberFormatException();
            return n;
        } catch (NumberFormatException e) {
            throw new Usage("--" + k + " must be a number from " + min + " to " + max);
        }
    }

    static boolean bool(Map<String, String> o, String k, boolean dflt) throws Usage {
        String v = o.get(k);
        if (v == null) return dflt;
        if (!v.equals("true") && !v.equals("false")) throw new Usage("--" + k + " is true or false");
        return v.equals("true");
    }

    /** Every line of the file without its newline ('\n' only: a payload may hold any byte). */
    static List<byte[]> lines(String file) throws Exception {
        byte[] all = Files.readAllBytes(Path.of(file));
        List<byte[]> out = new ArrayList<>();
        ByteArrayOutputStream line = new ByteArrayOutputStream();
        for (byte b : all) {
            if (b == '\n') {
                out.add(line.toByteArray());
                line.reset();
            } else {
                line.write(b);
            }
        }
        if (line.size() > 0) out.add(line.toByteArray());
        return out;
    }

    // ---------------------------------------------------------------------------------------
    // TLS: the CA to verify the server with, and the vehicle's certificate and PKCS#8 key
    // (what `telegate pki issue` writes: "BEGIN PRIVATE KEY", EC P-256), without BouncyCastle.

    static SSLContext tls(String ca, String cert, String key) throws Exception {
        CertificateFactory x509 = CertificateFactory.getInstance("X.509");
        KeyStore trust = KeyStore.getInstance(KeyStore.getDefaultType());
        trust.load(null, null);
        try (InputStream in = Files.newInputStream(Path.of(ca))) {
            int i = 0;
            for (Certificate c : x509.generateCertificates(in)) trust.setCertificateEntry("ca" + i++, c);
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(trust);

        KeyManager[] keys = null;
        if (cert != null) {
            Certificate[] chain;
            try (InputStream in = Files.newInputStream(Path.of(cert))) {
                chain = x509.generateCertificates(in).toArray(new Certificate[0]);
            }
            char[] pass = "interop".toCharArray(); // an in-memory store only
            KeyStore ks = KeyStore.getInstance("PKCS12");
            ks.load(null, null);
            ks.setKeyEntry("vehicle", privateKey(key), pass, chain);
            KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
            kmf.init(ks, pass);
            keys = kmf.getKeyManagers();
        }
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(keys, tmf.getTrustManagers(), null);
        return ctx;
    }

    static PrivateKey privateKey(String file) throws Exception {
        String pem = Files.readString(Path.of(file), StandardCharsets.US_ASCII);
        String begin = "-----BEGIN PRIVATE KEY-----", end = "-----END PRIVATE KEY-----";
        int b = pem.indexOf(begin), e = pem.indexOf(end);
        if (b < 0 || e < b) throw new Exception(file + ": not a PKCS#8 key (BEGIN PRIVATE KEY)");
        byte[] der = Base64.getMimeDecoder().decode(pem.substring(b + begin.length(), e));
        Exception last = null;
        for (String alg : List.of("EC", "RSA", "Ed25519")) {
            try {
                return KeyFactory.getInstance(alg).generatePrivate(new PKCS8EncodedKeySpec(der));
            } catch (Exception x) {
                last = x;
            }
        }
        throw new Exception(file + ": unreadable key", last);
    }

    // ---------------------------------------------------------------------------------------

    public static void main(String[] args) throws Exception {
        Map<String, String> o;
        int port, mqtt, keepAlive, timeout, qos, idle;
        boolean clean;
        List<byte[]> payloads = List.of();
        try {
            o = parse(args);
            port = number(o, "port", 0, 1, 65535);
            mqtt = number(o, "mqtt", 3, 3, 5);
            if (mqtt == 4) throw new Usage("--mqtt must be 3 or 5");
            keepAlive = number(o, "keep-alive", 30, 0, 65535);
            timeout = number(o, "timeout", 30, 1, 1_000_000);
            qos = number(o, "qos", 1, 0, 1);
            idle = number(o, "idle", 0, 0, 1_000_000);
            clean = bool(o, "clean", true);
            reconnect = bool(o, "reconnect", true);
            if (o.containsKey("publish")) {
                try {
                    payloads = lines(o.get("publish"));
                } catch (Exception e) {
                    throw new Usage("--publish: " + e);
                }
            }
        } catch (Usage u) {
            System.err.println("paho-java: " + u.getMessage() + " (see interop/README.md)");
            exit(2);
            return;
        }
        long deadline = System.currentTimeMillis() + timeout * 1000L;

        Mqtt m;
        try {
            SSLContext ssl = tls(o.get("ca"), o.get("cert"), o.get("key"));
            String uri = "ssl://" + o.get("host") + ":" + port;
            // 3.1.1 announces no receive maximum: Paho's own window (10 by default) is the only
            // one, and is widened so that the whole burst is in flight at once.
            int window = Math.min(65535, Math.max(10, payloads.size()));
            m = mqtt == 5
                    ? new V5(uri, o.get("client-id"), o.get("store"), ssl, keepAlive, clean, reconnect, timeout)
                    : new V3(uri, o.get("client-id"), o.get("store"), ssl, keepAlive, clean, reconnect, timeout, window);
            m.start();
        } catch (Exception e) {
            emit("{\"event\":\"error\",\"message\":" + str(describe(e)) + "}");
            exit(1);
            return;
        }
        synchronized (LOCK) {
            while (!up && !failed) {
                if (!await(deadline, 1000)) break;
            }
            if (!up) {
                if (!failed) connectFailed("no CONNACK before the timeout");
                exit(1);
            }
        }

        int published = 0;
        boolean ok;
        if (o.containsKey("publish")) {
            // Everything goes to the library at once; only a publish it refuses for now (its
            // window is full: Paho throws rather than queues; it is disconnecting, reconnecting
            // or not connected) is handed again after the next event, usually an
            // acknowledgement or the reconnect. (Each refusal costs Paho a message id, which
            // it never frees: retrying on events rather than on a short timer keeps that
            // small.) A frame whose publish the library fails later is handed again too: a
            // vehicle keeps every frame until its PUBACK. "handed" counts the frames of the
            // file the library has taken, in order.
            runQos = qos;
            settled = new boolean[payloads.size()];
            boolean gaveUp = false;
            int next = 0;
            long t0 = System.nanoTime();
            while (!gaveUp) {
                int frame;
                boolean first;
                synchronized (LOCK) {
                    if (!AGAIN.isEmpty()) {
                        frame = AGAIN.poll();
                        first = false;
                    } else if (next < payloads.size()) {
                        frame = next;
                        first = true;
                    } else if ((qos == 1 ? acked + refused : written) >= payloads.size()) {
                        break;
                    } else {
                        if (!await(deadline, 1000)) gaveUp = true;
                        continue;
                    }
                }
                while (true) {
                    try {
                        m.send(o.get("topic"), payloads.get(frame), qos, frame);
                        if (first) {
                            synchronized (LOCK) {
                                next++;
                                handed++;
                                published++;
                                emit("{\"event\":\"handed\",\"count\":" + handed + "}");
                            }
                        }
                        break;
                    } catch (Busy b) {
                        synchronized (LOCK) {
                            if (!await(deadline, 1000)) gaveUp = true;
                        }
                    } catch (Exception e) {
                        emit("{\"event\":\"error\",\"message\":" + str(describe(e)) + "}");
                        gaveUp = true;
                    }
                    if (gaveUp) break;
                }
            }
            System.err.printf("paho-java: handed %d publishes to Paho in %d ms%n", published,
                    (System.nanoTime() - t0) / 1_000_000);
            synchronized (LOCK) {
                ok = !gaveUp && (qos == 1 ? acked : written) == payloads.size();
            }
        } else if (o.containsKey("resume")) {
            published = m.restored();
            synchronized (LOCK) {
                while (acked < published && await(deadline, 1000)) {}
                ok = acked >= published;
            }
        } else if (o.containsKey("subscribe")) {
            int[] codes;
            try {
                codes = m.grant(o.get("subscribe"), qos, Math.max(1, deadline - System.currentTimeMillis()));
            } catch (Exception e) {
                emit("{\"event\":\"error\",\"message\":" + str(describe(e)) + "}");
                codes = null;
            }
            ok = codes != null && codes.length > 0;
            if (codes != null) {
                StringBuilder b = new StringBuilder();
                for (int c : codes) {
                    b.append(b.length() == 0 ? "" : ",").append(c);
                    ok &= c < 0x80;
                }
                emit("{\"event\":\"suback\",\"codes\":[" + b + "]}");
            }
        } else {
            long want = System.currentTimeMillis() + idle * 1000L;
            synchronized (LOCK) {
                while (await(Math.min(want, deadline), 1000)) {}
                ok = losses == 0 && up && want <= deadline;
            }
        }
        synchronized (LOCK) {
            closing = true;
            emit("{\"event\":\"done\",\"published\":" + published + ",\"acked\":" + acked + "}");
        }
        m.end();
        exit(ok ? 0 : 1);
    }

    /** Codes the run treats as "not now, hand it again" rather than as failures. */
    static boolean busy(int reason) {
        return switch (reason) {
            case 32001 /* no message ids available */, 32102 /* disconnecting */,
                    32104 /* not connected */, 32109 /* connection lost */,
                    32110 /* connect in progress */, 32202 /* too many publishes in flight */,
                    32203 /* disconnected buffer full */ -> true;
            default -> false;
        };
    }

    // ---------------------------------------------------------------------------------------
    // MQTT 3.1.1: org.eclipse.paho.client.mqttv3

    static final class V3 extends org.eclipse.paho.client.mqttv3.MqttAsyncClient implements Mqtt {
        final org.eclipse.paho.client.mqttv3.MqttConnectOptions opts = new org.eclipse.paho.client.mqttv3.MqttConnectOptions();
        volatile boolean sessionPresent;
        final int restored;

        V3(String uri, String id, String store, SSLContext ssl, int keepAlive, boolean clean,
                boolean reconnect, int timeout, int window) throws Exception {
            // The store is read here: publishes it holds become pending delivery tokens.
            super(uri, id, store == null
                    ? new org.eclipse.paho.client.mqttv3.persist.MemoryPersistence()
                    : new org.eclipse.paho.client.mqttv3.persist.MqttDefaultFilePersistence(store));
            restored = getPendingDeliveryTokens().length;
            // 3.1.1 exactly: the default would retry a refused CONNECT as MQTT 3.1.
            opts.setMqttVersion(org.eclipse.paho.client.mqttv3.MqttConnectOptions.MQTT_VERSION_3_1_1);
            opts.setSocketFactory(ssl.getSocketFactory());
            opts.setHttpsHostnameVerificationEnabled(true);
            opts.setKeepAliveInterval(keepAlive);
            opts.setCleanSession(clean);
            opts.setAutomaticReconnect(reconnect);
            opts.setConnectionTimeout(timeout);
            opts.setMaxInflight(window);
            setCallback(new org.eclipse.paho.client.mqttv3.MqttCallbackExtended() {
                public void connectComplete(boolean again, String serverURI) {
                    connected(sessionPresent);
                }

                public void connectionLost(Throwable cause) {
                    lost(describe(cause));
                }

                public void messageArrived(String topic, org.eclipse.paho.client.mqttv3.MqttMessage msg) {
                    System.err.println("paho-java: message on " + topic);
                }

                public void deliveryComplete(org.eclipse.paho.client.mqttv3.IMqttDeliveryToken t) {
                    delivered(t.getUserContext(), true, null);
                }
            });
        }

        /**
         * Every CONNECT goes through here, the automatic reconnects too (Paho calls this method
         * on itself), so the wrapped listener sees each CONNACK: its session-present flag, which
         * connectComplete does not carry, and each refusal, which connectionLost does not report.
         */
        @Override
        public org.eclipse.paho.client.mqttv3.IMqttToken connect(
                org.eclipse.paho.client.mqttv3.MqttConnectOptions options, Object ctx,
                org.eclipse.paho.client.mqttv3.IMqttActionListener listener)
                throws org.eclipse.paho.client.mqttv3.MqttException {
            return super.connect(options, ctx, new org.eclipse.paho.client.mqttv3.IMqttActionListener() {
                public void onSuccess(org.eclipse.paho.client.mqttv3.IMqttToken t) {
                    sessionPresent = t.getSessionPresent();
                    if (listener != null) listener.onSuccess(t);
                }

                public void onFailure(org.eclipse.paho.client.mqttv3.IMqttToken t, Throwable e) {
                    connectFailed(describe(e));
                    if (listener != null) listener.onFailure(t, e);
                }
            });
        }

        public void start() throws Exception {
            connect(opts, null, null);
        }

        public void send(String topic, byte[] payload, int qos, int frame) throws Exception {
            try {
                publish(topic, payload, qos, false, frame, new org.eclipse.paho.client.mqttv3.IMqttActionListener() {
                    public void onSuccess(org.eclipse.paho.client.mqttv3.IMqttToken t) {}

                    public void onFailure(org.eclipse.paho.client.mqttv3.IMqttToken t, Throwable e) {
                        failed(t.getUserContext(), e);
                    }
                });
            } catch (org.eclipse.paho.client.mqttv3.MqttException e) {
                if (busy(e.getReasonCode())) throw new Busy();
                throw e;
            }
        }

        public int[] grant(String filter, int qos, long waitMs) throws Exception {
            // The token completes with the SUBACK, a refusal (0x80) included.
            org.eclipse.paho.client.mqttv3.IMqttToken t = subscribe(filter, qos);
            t.waitForCompletion(waitMs);
            return t.getGrantedQos();
        }

        public int restored() {
            return restored;
        }

        public void end() {
            try {
                if (isConnected()) disconnect(0).waitForCompletion(2000);
            } catch (Exception e) {
                System.err.println("paho-java: disconnect: " + e);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // MQTT 5: org.eclipse.paho.mqttv5.client

    static final class V5 extends org.eclipse.paho.mqttv5.client.MqttAsyncClient implements Mqtt {
        final org.eclipse.paho.mqttv5.client.MqttConnectionOptions opts = new org.eclipse.paho.mqttv5.client.MqttConnectionOptions();
        volatile boolean sessionPresent;
        final int restored;

        V5(String uri, String id, String store, SSLContext ssl, int keepAlive, boolean clean,
                boolean reconnect, int timeout) throws Exception {
            super(uri, id, store == null
                    ? new org.eclipse.paho.mqttv5.client.persist.MemoryPersistence()
                    : new org.eclipse.paho.mqttv5.client.persist.MqttDefaultFilePersistence(store));
            restored = getPendingTokens().length;
            opts.setSocketFactory(ssl.getSocketFactory());
            opts.setHttpsHostnameVerificationEnabled(true);
            opts.setKeepAliveInterval(keepAlive);
            opts.setCleanStart(clean);
            // MQTT 5 keeps a session only with an expiry above 0 (the server caps it).
            if (!clean) opts.setSessionExpiryInterval(86400L);
            opts.setAutomaticReconnect(reconnect);
            opts.setConnectionTimeout(timeout);
            // The server's receive maximum from the CONNACK is Paho's window for publishes.
            setCallback(new org.eclipse.paho.mqttv5.client.MqttCallback() {
                public void connectComplete(boolean again, String serverURI) {
                    connected(sessionPresent);
                }

                public void disconnected(org.eclipse.paho.mqttv5.client.MqttDisconnectResponse r) {
                    lost(r.getException() != null ? describe(r.getException())
                            : "DISCONNECT " + r.getReturnCode() + (r.getReasonString() == null ? "" : " " + r.getReasonString()));
                }

                public void mqttErrorOccurred(org.eclipse.paho.mqttv5.common.MqttException e) {
                    emit("{\"event\":\"error\",\"message\":" + str(describe(e)) + "}");
                }

                public void messageArrived(String topic, org.eclipse.paho.mqttv5.common.MqttMessage msg) {
                    System.err.println("paho-java: message on " + topic);
                }

                public void deliveryComplete(org.eclipse.paho.mqttv5.client.IMqttToken t) {
                    // A PUBACK can refuse (0x87 not authorized): that is no acknowledgement.
                    int[] codes = t.getReasonCodes();
                    boolean ok = codes == null || codes.length == 0 || codes[0] < 0x80;
                    delivered(t.getUserContext(), ok, codes == null || codes.length == 0 ? "" : "reason " + codes[0]);
                }

                public void authPacketArrived(int reasonCode, org.eclipse.paho.mqttv5.common.packet.MqttProperties p) {}
            });
        }

        /** As in V3: every CONNECT, the automatic reconnects too, passes through here. */
        @Override
        public org.eclipse.paho.mqttv5.client.IMqttToken connect(
                org.eclipse.paho.mqttv5.client.MqttConnectionOptions options, Object ctx,
                org.eclipse.paho.mqttv5.client.MqttActionListener listener)
                throws org.eclipse.paho.mqttv5.common.MqttException {
            return super.connect(options, ctx, new org.eclipse.paho.mqttv5.client.MqttActionListener() {
                public void onSuccess(org.eclipse.paho.mqttv5.client.IMqttToken t) {
                    sessionPresent = t.getSessionPresent();
                    if (listener != null) listener.onSuccess(t);
                }

                public void onFailure(org.eclipse.paho.mqttv5.client.IMqttToken t, Throwable e) {
                    connectFailed(describe(e));
                    if (listener != null) listener.onFailure(t, e);
                }
            });
        }

        public void start() throws Exception {
            connect(opts, null, null);
        }

        public void send(String topic, byte[] payload, int qos, int frame) throws Exception {
            try {
                publish(topic, payload, qos, false, frame, new org.eclipse.paho.mqttv5.client.MqttActionListener() {
                    public void onSuccess(org.eclipse.paho.mqttv5.client.IMqttToken t) {}

                    public void onFailure(org.eclipse.paho.mqttv5.client.IMqttToken t, Throwable e) {
                        failed(t.getUserContext(), e);
                    }
                });
            } catch (org.eclipse.paho.mqttv5.common.MqttException e) {
                if (busy(e.getReasonCode())) throw new Busy();
                throw e;
            }
        }

        public int[] grant(String filter, int qos, long waitMs) throws Exception {
            org.eclipse.paho.mqttv5.client.IMqttToken t =
                    subscribe(new org.eclipse.paho.mqttv5.common.MqttSubscription(filter, qos));
            t.waitForCompletion(waitMs);
            return t.getReasonCodes();
        }

        public int restored() {
            return restored;
        }

        public void end() {
            try {
                if (isConnected()) disconnect(0).waitForCompletion(2000);
            } catch (Exception e) {
                System.err.println("paho-java: disconnect: " + e);
            }
        }
    }
}
