// An MQTT 3.1.1 client on Eclipse Paho Go with the command line and the JSON lines of
// interop/README.md. Paho Go speaks MQTT 3.1.1 only: --mqtt 5 is a usage error.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"
)

// The run's state, changed from Paho's goroutines. Each event is printed under mu, before
// the change is announced on changed, so that "done" can never overtake it.
var (
	mu        sync.Mutex
	changed   = make(chan struct{}, 1)
	up        bool
	failed    bool
	closing   bool
	acked     int
	written   int
	losses    int
	reconnect bool
	sessPres  atomic.Bool

	// QoS 1 publishes are acknowledged by the PUBACKs the sniffer sees on the wire, never by
	// a token: Paho Go completes a token without an error also when it merely reuses its
	// message id (resending from the store after a reconnect), before any PUBACK.
	midFrame   = map[uint16]int{}  // the frame each message id was last stored for
	frameOf    = map[string]int{}  // a payload's frame (each line of the file is distinct)
	frameAcked []bool              // the frames a PUBACK acknowledged
	restored   = map[uint16]bool{} // --resume: the ids of the publishes the store held
	resuming   bool
	lastAck    time.Time // when a PUBACK of ours last arrived
)

// puback counts a PUBACK the server sent: for a frame of this run, or for a publish the store
// held (--resume), each once.
func puback(mid uint16) {
	event(func() {
		if resuming {
			if !restored[mid] {
				return
			}
			delete(restored, mid)
		} else {
			f, ok := midFrame[mid]
			if !ok || frameAcked[f] {
				return
			}
			frameAcked[f] = true
		}
		acked++
		lastAck = time.Now()
		emit("event", "acked", "count", acked)
	})
}

// tracking is the library's store with the frame of every outbound publish noted as the
// library stores it, before it writes the publish: a PUBACK can never overtake the note.
type tracking struct{ mqtt.Store }

func (t tracking) Put(key string, m packets.ControlPacket) {
	t.Store.Put(key, m)
	if p, ok := m.(*packets.PublishPacket); ok && strings.HasPrefix(key, "o.") {
		mu.Lock()
		if f, ok := frameOf[string(p.Payload)]; ok {
			midFrame[p.MessageID] = f
		}
		mu.Unlock()
	}
}

// emit prints one JSON line; the caller holds mu.
func emit(fields ...any) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b) // each value followed by '\n', dropped below
	enc.SetEscapeHTML(false)
	b.WriteByte('{')
	for i := 0; i < len(fields); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		_ = enc.Encode(fields[i])
		b.Truncate(b.Len() - 1)
		b.WriteByte(':')
		_ = enc.Encode(fields[i+1])
		b.Truncate(b.Len() - 1)
	}
	b.WriteString("}\n")
	os.Stdout.Write(b.Bytes()) // unbuffered: on its way at once
}

func event(f func()) {
	mu.Lock()
	f()
	mu.Unlock()
	select {
	case changed <- struct{}{}:
	default:
	}
}

// wait blocks until the state changed or until, whichever comes first; false once until
// has passed.
func wait(until time.Time) bool {
	left := time.Until(until)
	// Without automatic reconnect a lost connection ends the wait: nothing more can come.
	if left <= 0 || state(func() bool { return !reconnect && losses > 0 }) {
		return false
	}
	select {
	case <-changed:
	case <-time.After(min(left, 100*time.Millisecond)):
	}
	return true
}

func state[T any](f func() T) T {
	mu.Lock()
	defer mu.Unlock()
	return f()
}

// sniff reads the packets the server sends as Paho receives them: the CONNACK's
// session-present flag (Paho Go tells it for the first connection only,
// ConnectToken.SessionPresent, not for its automatic reconnects) and every PUBACK.
type sniff struct {
	net.Conn
	buf    []byte
	broken bool
}

func (s *sniff) Read(p []byte) (int, error) {
	n, err := s.Conn.Read(p)
	if n > 0 && !s.broken {
		s.buf = append(s.buf, p[:n]...)
		s.parse()
	}
	return n, err
}

// parse takes every whole packet off buf: fixed header, remaining length, body.
func (s *sniff) parse() {
	for len(s.buf) >= 2 {
		length, mul, i := 0, 1, 1
		for {
			if i >= len(s.buf) {
				return
			}
			b := s.buf[i]
			length += int(b&0x7f) * mul
			mul *= 128
			i++
			if b&0x80 == 0 {
				break
			}
			if i > 4 { // not MQTT: Paho will drop the connection
				s.broken, s.buf = true, nil
				return
			}
		}
		if len(s.buf) < i+length {
			return
		}
		body := s.buf[i : i+length]
		switch s.buf[0] >> 4 {
		case 2: // CONNACK
			if length >= 2 {
				sessPres.Store(body[0]&1 == 1)
			}
		case 4: // PUBACK
			if length >= 2 {
				puback(uint16(body[0])<<8 | uint16(body[1]))
			}
		}
		s.buf = append(s.buf[:0], s.buf[i+length:]...)
	}
}

// usage reports a usage error and exits 2.
func usage(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "paho-go: "+format+" (see interop/README.md)\n", args...)
	os.Exit(2)
}

func boolean(name, v string) bool {
	if v != "true" && v != "false" {
		usage("--%s is true or false", name)
	}
	return v == "true"
}

func tlsConfig(ca, cert, key string) (*tls.Config, error) {
	pem, err := os.ReadFile(ca)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no certificate", ca)
	}
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if cert != "" {
		// The PKCS#8 key of `telegate pki issue` (and PKCS#1/SEC 1 ones) load as they are.
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func main() {
	fs := flag.NewFlagSet("paho-go", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	host := fs.String("host", "", "")
	port := fs.Int("port", 0, "")
	ca := fs.String("ca", "", "")
	cert := fs.String("cert", "", "")
	key := fs.String("key", "", "")
	clientID := fs.String("client-id", "", "")
	version := fs.String("mqtt", "3", "")
	keepAlive := fs.Int("keep-alive", 30, "")
	cleanS := fs.String("clean", "true", "")
	store := fs.String("store", "", "")
	timeout := fs.Int("timeout", 30, "")
	reconnectS := fs.String("reconnect", "true", "")
	publish := fs.String("publish", "", "")
	topic := fs.String("topic", "", "")
	qosN := fs.Int("qos", 1, "")
	resume := fs.Bool("resume", false, "")
	subscribe := fs.String("subscribe", "", "")
	idle := fs.Int("idle", -1, "")
	if err := fs.Parse(os.Args[1:]); err != nil {
		usage("%v", err)
	}
	if fs.NArg() > 0 {
		usage("unexpected argument %q", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, k := range []string{"host", "port", "ca", "client-id"} {
		if !given[k] {
			usage("--%s is required", k)
		}
	}
	switch *version {
	case "3":
	case "5":
		usage("Paho Go speaks MQTT 3.1.1 only")
	default:
		usage("--mqtt is 3 or 5")
	}
	if given["cert"] != given["key"] {
		usage("--cert and --key go together")
	}
	actions := 0
	for _, k := range []string{"publish", "resume", "subscribe", "idle"} {
		if given[k] {
			actions++
		}
	}
	if actions != 1 {
		usage("one action: --publish, --resume, --subscribe or --idle")
	}
	if given["publish"] && !given["topic"] {
		usage("--publish needs --topic")
	}
	if *qosN != 0 && *qosN != 1 {
		usage("--qos is 0 or 1")
	}
	if *timeout < 1 || *keepAlive < 0 || *port < 1 || *port > 65535 || (given["idle"] && *idle < 0) {
		usage("a number out of range")
	}
	clean := boolean("clean", *cleanS)
	reconnect = boolean("reconnect", *reconnectS)
	if *resume {
		if *store == "" {
			usage("--resume needs --store")
		}
		clean = false
	}
	qos := byte(*qosN)
	var payloads [][]byte
	if *publish != "" {
		data, err := os.ReadFile(*publish)
		if err != nil {
			usage("--publish: %v", err)
		}
		// Every line without its newline ('\n' only: a payload may hold any byte).
		payloads = bytes.Split(data, []byte("\n"))
		if len(payloads[len(payloads)-1]) == 0 {
			payloads = payloads[:len(payloads)-1]
		}
	}
	deadline := time.Now().Add(time.Duration(*timeout) * time.Second)

	// Paho's own logs (off by default) go to stderr.
	mqtt.ERROR = log.New(os.Stderr, "paho-go ERROR ", log.LstdFlags)
	mqtt.CRITICAL = log.New(os.Stderr, "paho-go CRITICAL ", log.LstdFlags)

	cfg, err := tlsConfig(*ca, *cert, *key)
	if err != nil {
		event(func() { emit("event", "error", "message", err.Error()) })
		os.Exit(1)
	}
	broker := "tls://" + net.JoinHostPort(*host, fmt.Sprint(*port))
	opts := mqtt.NewClientOptions().
		AddBroker(broker).
		SetClientID(*clientID).
		SetProtocolVersion(4). // explicit: no fallback to MQTT 3.1 after a refusal
		SetKeepAlive(time.Duration(*keepAlive) * time.Second).
		SetCleanSession(clean).
		SetAutoReconnect(reconnect).
		SetConnectRetry(false). // a first connect that fails is reported, not retried
		SetConnectTimeout(time.Duration(*timeout) * time.Second).
		// Publish blocks while the library's outbound queue does not move (the server stops
		// reading a 3.1.1 connection past its receive maximum): allow it the whole run.
		SetWriteTimeout(time.Duration(*timeout) * time.Second).
		SetTLSConfig(cfg).
		// The same TLS dial as Paho's own, with the CONNACK sniffer around the connection.
		SetCustomOpenConnectionFn(func(u *url.URL, o mqtt.ClientOptions) (net.Conn, error) {
			d := &net.Dialer{Timeout: o.ConnectTimeout}
			c, err := tls.DialWithDialer(d, "tcp", u.Host, o.TLSConfig)
			if err != nil {
				return nil, err
			}
			return &sniff{Conn: c}, nil
		}).
		SetOnConnectHandler(func(mqtt.Client) {
			event(func() {
				emit("event", "connected", "session_present", sessPres.Load())
				up = true
			})
		}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			event(func() {
				if up && !closing {
					emit("event", "lost", "reason", err.Error())
					up = false
					losses++
				}
			})
		}).
		// Every refused or failed CONNECT, the automatic reconnects' too.
		SetConnectionNotificationHandler(func(_ mqtt.Client, n mqtt.ConnectionNotification) {
			if f, ok := n.(mqtt.ConnectionNotificationFailed); ok {
				event(func() {
					emit("event", "connect_failed", "reason", f.Reason.Error())
					failed = true
				})
			}
		}).
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) {
			fmt.Fprintln(os.Stderr, "paho-go: message on", m.Topic())
		})

	// The store holds what an earlier run left unacknowledged; the client sends it again
	// once connected (clean session false). Counted here, before the client touches it.
	// Keys "o.<id>" are outbound packets awaiting their acknowledgement.
	var st mqtt.Store = mqtt.NewMemoryStore()
	if *store != "" {
		st = mqtt.NewFileStore(*store)
	}
	st.Open()
	for _, k := range st.All() {
		if p, ok := st.Get(k).(*packets.PublishPacket); ok && strings.HasPrefix(k, "o.") {
			restored[p.MessageID] = true
		}
	}
	resuming = *resume
	frameAcked = make([]bool, len(payloads))
	for i, p := range payloads {
		if _, dup := frameOf[string(p)]; !dup {
			frameOf[string(p)] = i
		}
	}
	opts.SetStore(tracking{st})

	client := mqtt.NewClient(opts)
	token := client.Connect()
	for !state(func() bool { return up || failed }) && wait(deadline) {
	}
	if !state(func() bool { return up }) {
		event(func() {
			if !failed {
				if token.Error() != nil {
					emit("event", "connect_failed", "reason", token.Error().Error())
				} else {
					emit("event", "connect_failed", "reason", "no CONNACK before the timeout")
				}
			}
		})
		os.Exit(1)
	}

	published, ok := 0, false
	switch {
	case given["publish"]:
		// Everything goes to the library at once. Paho Go has no window of its own: Publish
		// stores a QoS 1 publish (the file store: on disk) and queues it, and returns once the
		// sending goroutine took it; "handed" counts the frames the library holds so far.
		// A frame whose token fails (a write cut by a lost connection, a refusal) is published
		// again once connected, as a vehicle keeps every frame until its PUBACK; a QoS 1 frame
		// counts as acknowledged on its PUBACK only (the sniffer).
		handed := 0
		var hand func(i int, first bool) bool
		hand = func(i int, first bool) bool {
			for {
				t := client.Publish(*topic, qos, false, payloads[i])
				if t.Error() == nil {
					if first {
						event(func() {
							handed++
							emit("event", "handed", "count", handed)
						})
					}
					go func(t mqtt.Token) {
						<-t.Done()
						err := t.Error()
						if err == nil {
							if qos == 0 {
								event(func() { written++ })
							}
							return
						}
						fmt.Fprintf(os.Stderr, "paho-go: frame %d: %v; publishing it again once connected\n", i+1, err)
						if qos == 1 {
							again(i, hand)
						}
					}(t)
					return true
				}
				// Refused at once (not connected, no free message id): wait for the reconnect.
				fmt.Fprintf(os.Stderr, "paho-go: frame %d refused: %v; again once connected\n", i+1, t.Error())
				time.Sleep(100 * time.Millisecond)
				for !state(func() bool { return up }) && wait(deadline) {
				}
				if !time.Now().Before(deadline) || !state(func() bool { return up }) {
					return false
				}
			}
		}
		gaveUp := false
		for i := range payloads {
			if !hand(i, true) {
				event(func() {
					emit("event", "error", "message", fmt.Sprintf("frame %d never taken by the library before the timeout", i+1))
				})
				gaveUp = true
				break
			}
			published++
		}
		count := func() int {
			return state(func() int {
				if qos == 0 {
					return written
				}
				return acked
			})
		}
		for count() < published && wait(deadline) {
		}
		ok = !gaveUp && count() == len(payloads)
	case *resume:
		// Paho Go resends what the store holds without handing out tokens for it: a publish
		// is acknowledged by its PUBACK (the sniffer counts the ids the store held).
		published = len(restored)
		for state(func() bool { return acked < published }) && wait(deadline) {
		}
		ok = state(func() bool { return acked == published })
	case given["subscribe"]:
		t := client.Subscribe(*subscribe, qos, nil)
		if !t.WaitTimeout(time.Until(deadline)) {
			event(func() { emit("event", "error", "message", "no SUBACK before the timeout") })
			break
		}
		st := t.(*mqtt.SubscribeToken)
		if err := st.Error(); err != nil {
			event(func() { emit("event", "error", "message", err.Error()) })
		}
		code, found := st.Result()[*subscribe]
		if found {
			event(func() { emit("event", "suback", "codes", []int{int(code)}) })
		}
		ok = found && code < 0x80
	default:
		want := time.Now().Add(time.Duration(*idle) * time.Second)
		for wait(minTime(want, deadline)) {
		}
		ok = state(func() bool { return losses == 0 && up }) && !want.After(deadline)
	}
	event(func() {
		closing = true
		emit("event", "done", "published", published, "acked", acked)
	})
	if client.IsConnectionOpen() {
		client.Disconnect(250) // a polite DISCONNECT; what is unacknowledged stays in the store
	}
	if ok {
		os.Exit(0)
	}
	os.Exit(1)
}

// again publishes frame i once more after its token failed: once connected, and once the
// library's own resend from its store (same message id) has had a moment to be acknowledged,
// unless a PUBACK acknowledged the frame meanwhile.
func again(i int, hand func(int, bool) bool) {
	for {
		for !state(func() bool { return up || closing }) {
			time.Sleep(50 * time.Millisecond)
		}
		since := time.Now()
		for time.Since(since) < 3*time.Second {
			if state(func() bool { return frameAcked[i] || closing || !up }) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if state(func() bool { return frameAcked[i] || closing }) {
			return
		}
		if state(func() bool { return up }) && time.Since(state(func() time.Time { return lastAck })) > 500*time.Millisecond {
			hand(i, false)
			return
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
