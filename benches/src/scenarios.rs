//! [`SCENARIOS`]: every scenario the harness can run, with what it measures and how.

#[cfg(any(
    feature = "nats",
    feature = "zmq",
    feature = "zenoh",
    feature = "libp2p"
))]
use crate::rivals;
use crate::{
    Measures, OUTBOX_AT_RATE_NAME, OUTBOX_LATENCY_NAME, OUTBOX_THROUGHPUT_NAME, QUINN_AT_RATE_NAME,
    SHOAL_AT_RATE_NAME, Scenario, busy_poll, connect, discovery_timing, flood, outbox, pubsub,
    pubsub_throughput, quinn_echo, shoal_scenarios, systems, typed_request, udp_echo,
};

/// Every scenario, in the order `--scenario all` runs them. Add new scenarios here.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: udp_echo::NAME,
        system: systems::UDP,
        setup: "tokio UdpSocket, one datagram per message, no crypto",
        about: "raw UDP: one datagram echoed over loopback, no crypto, closed loop",
        run: Measures::RoundTrip(udp_echo::run),
        in_all: true,
    },
    Scenario {
        name: quinn_echo::STREAM_NAME,
        system: systems::QUINN,
        setup: "quinn 0.11 (ring), mutual TLS, 4 MiB socket buffers (as Shoal), one \
                long-lived bidi stream, u32 length prefix",
        about: "raw quinn (baseline): echo over ONE long-lived bidi stream, mutual TLS, \
                u32-length-prefixed frames",
        run: Measures::RoundTrip(quinn_echo::run_stream),
        in_all: true,
    },
    Scenario {
        name: quinn_echo::DATAGRAM_NAME,
        system: systems::QUINN,
        setup: "quinn 0.11 (ring), mutual TLS, 4 MiB socket buffers (as Shoal), QUIC \
                DATAGRAM frames",
        about: "raw quinn datagrams: QUIC DATAGRAM frame echoed, mutual TLS",
        run: Measures::RoundTrip(quinn_echo::run_datagram),
        in_all: true,
    },
    Scenario {
        name: shoal_scenarios::SEND_NAME,
        system: systems::SHOAL,
        setup: "Shoal defaults: static peer on 127.0.0.1, mutual TLS, ack after the handler ran",
        about: "Shoal point-to-point: send a command, resolve when the receiver's handler \
                finished and its ack came back",
        run: Measures::RoundTrip(shoal_scenarios::run_send),
        in_all: true,
    },
    Scenario {
        name: shoal_scenarios::REQUEST_NAME,
        system: systems::SHOAL,
        setup: "Shoal defaults: static peer on 127.0.0.1, mutual TLS, the reply answers (no ack)",
        about: "Shoal request/response: request to an echo handler, resolve on the reply",
        run: Measures::RoundTrip(shoal_scenarios::run_request),
        in_all: true,
    },
    Scenario {
        name: busy_poll::NAME,
        system: systems::SHOAL,
        setup: "raw quinn's stream echo and Shoal's defaults, every side's runtime polling \
                for input instead of sleeping (Shoal: NodeBuilder::busy_poll(1 ms))",
        about: "round trip with busy polling: raw quinn, Shoal send and request \
                (--baseline quinn-stream-busy-poll-request for the ratios to the polling floor)",
        run: Measures::RoundTrip(busy_poll::run),
        in_all: true,
    },
    Scenario {
        name: busy_poll::AT_RATE_NAME,
        system: systems::SHOAL,
        setup: "as busy-poll, every message its own request / send future",
        about: "busy-poll at the offered --rate: quinn-stream-busy-poll-at-<rate>, \
                shoal-busy-poll-request-at-<rate>, shoal-send-busy-poll-at-<rate>",
        run: Measures::AtRate(busy_poll::run_at_rate),
        in_all: true,
    },
    Scenario {
        name: typed_request::NAME,
        system: systems::SHOAL,
        setup: "Shoal defaults, typed contracts: JSON request and reply with --payload bytes \
                of fields, dispatched on (name, major version)",
        about: "Shoal typed request/response: a typed request (JSON) to a typed handler, \
                resolve on the decoded typed reply",
        run: Measures::RoundTrip(typed_request::run),
        in_all: true,
    },
    Scenario {
        name: pubsub::FANOUT_PREFIX,
        system: systems::QUINN,
        setup: "quinn 0.11 (ring), mutual TLS, 4 MiB socket buffers (as Shoal), one \
                long-lived bidi stream per receiver, 1-byte ack",
        about: "raw quinn one-way latency to 1 and 8 receivers (quinn-oneway, the one-way \
                baseline; quinn-fanout-8, -8-last), closed loop on the acks",
        run: Measures::OneWay(pubsub::run_quinn),
        in_all: true,
    },
    Scenario {
        name: pubsub::PUBLISH_PREFIX,
        system: systems::SHOAL,
        setup: "Shoal defaults: reliable publish, one group per subscriber node",
        about: "one-way publish -> handler latency to 1 and 8 subscriber nodes (closed loop \
                on the reliable ack): shoal-publish-1, -8, -8-last",
        run: Measures::OneWay(pubsub::run_shoal_publish),
        in_all: true,
    },
    Scenario {
        name: pubsub_throughput::QUINN_SCENARIO,
        system: systems::QUINN,
        setup: "quinn 0.11 (ring), mutual TLS, 4 MiB socket buffers (as Shoal), one uni \
                stream, ~64 KiB of frames per write_all",
        about: "raw quinn msgs/s at 64 B, 1 KiB, 64 KiB: the floor of every throughput row",
        run: Measures::Throughput(pubsub_throughput::run_quinn_batch),
        in_all: true,
    },
    Scenario {
        name: pubsub_throughput::SHOAL_SCENARIO,
        system: systems::SHOAL,
        setup: "Shoal defaults (busy polling 20 us after each message once messages travel \
                in batches): 256 reliable publishes/sends/requests in flight, or \
                publish_batch (<= 256 events, <= 1 MiB) x 8 in flight, or background \
                publishes or sends (reliable, not awaited), or best-effort",
        about: "msgs/s at 64 B, 1 KiB, 64 KiB: shoal-pubsub-, -pubsub-batch-, \
                -pubsub-background-, -pubsub-best-effort-, shoal-p2p-, \
                shoal-p2p-background-, shoal-p2p-request-<size>, shoal-p2p-keyed-64",
        run: Measures::Throughput(pubsub_throughput::run_shoal_throughput),
        in_all: true,
    },
    Scenario {
        name: QUINN_AT_RATE_NAME,
        system: systems::QUINN,
        setup: "quinn 0.11 (ring), mutual TLS, 4 MiB socket buffers (as Shoal), one \
                long-lived bidi stream, frames written when due, echoes read concurrently",
        about: "raw quinn stream echo at the offered --rate: quinn-stream-at-<rate>, latency \
                from each frame's intended send time",
        run: Measures::AtRate(quinn_echo::run_stream_at_rate),
        in_all: true,
    },
    Scenario {
        name: SHOAL_AT_RATE_NAME,
        system: systems::SHOAL,
        setup: "Shoal defaults: static peer on 127.0.0.1, every message its own request / \
                send future",
        about: "Shoal request and send at the offered --rate: shoal-request-at-<rate>, \
                shoal-send-at-<rate>",
        run: Measures::AtRate(shoal_scenarios::run_at_rate),
        in_all: true,
    },
    Scenario {
        name: connect::QUINN_NAME,
        system: systems::QUINN,
        setup: "quinn 0.11 (ring): client config + new endpoint + mutual-TLS handshake + \
                the server's first byte",
        about: "raw quinn connection set-up, TLS included, over fresh client endpoints",
        run: Measures::SetUp(connect::run_quinn),
        in_all: true,
    },
    Scenario {
        name: connect::SHOAL_NAME,
        system: systems::SHOAL,
        setup: "Shoal defaults: a fresh node with the server as static peer",
        about: "Shoal node start -> peer up (TLS + hello), and -> first send acked \
                (shoal-connect-send), over fresh nodes",
        run: Measures::SetUp(connect::run_shoal),
        in_all: true,
    },
    Scenario {
        name: discovery_timing::SCENARIO_NAME,
        system: systems::SHOAL,
        setup: "Shoal defaults with mDNS on a LAN of network namespaces (needs root; \
                skipped otherwise)",
        about: "fresh node start -> first send acked by a service found by mDNS \
                (shoal-discover), inside namespaces it builds",
        run: Measures::SetUp(discovery_timing::run_scenario),
        in_all: true,
    },
    Scenario {
        name: flood::NAME,
        system: systems::SHOAL,
        setup: "Shoal defaults (handshake rate 100/s in bursts of 200, a 5 s penalty once 10 \
                TLS handshakes from one address were refused within a second): static peer on 127.0.0.1; the flooder, on 127.0.0.2 at \
                nice 19, accepts any server certificate and presents one from a CA the node \
                does not trust, 64 attempts in flight",
        about: "honest request RTT quiet (shoal-flood-quiet) and during a flood of 10,000 \
                handshake attempts with a foreign certificate (shoal-flood-during)",
        run: Measures::RoundTrip(flood::run),
        in_all: true,
    },
    Scenario {
        name: OUTBOX_LATENCY_NAME,
        system: systems::SHOAL,
        setup: "Shoal defaults; outbox in a SQLite file (WAL, synchronous=NORMAL) and in \
                PostgreSQL (a throwaway cluster, fsync=off), polling and log tailing",
        about: "transactional outbox: commit of 1, 10 or 100 messages until each one's \
                handler ran, beside as many direct sends",
        run: Measures::RoundTrip(outbox::run_latency),
        in_all: true,
    },
    Scenario {
        name: OUTBOX_THROUGHPUT_NAME,
        system: systems::SHOAL,
        setup: "Shoal defaults; outbox in a SQLite file (WAL, synchronous=NORMAL) and in \
                PostgreSQL (a throwaway cluster, fsync=off), polling and log tailing",
        about: "transactional outbox: messages handled per second, committed in transactions \
                of 1, 10 and 100 messages, beside direct sends in batches as large",
        run: Measures::Throughput(outbox::run_throughput),
        in_all: true,
    },
    Scenario {
        name: OUTBOX_AT_RATE_NAME,
        system: systems::SHOAL,
        setup: "Shoal defaults; outbox in PostgreSQL (a throwaway cluster, fsync=off); \
                1,000 msgs/s whatever --rate says",
        about: "transactional outbox at 1,000 msgs/s offered, one message per transaction: \
                commit until the handler ran, log tailing and polling, beside direct sends",
        run: Measures::AtRate(outbox::run_at_rate),
        in_all: true,
    },
    #[cfg(feature = "nats")]
    Scenario {
        name: rivals::nats::REQUEST_NAME,
        system: systems::NATS,
        setup: rivals::nats::REQUEST_SETUP,
        about: "NATS request/reply through nats-server: Client::request to an echoing \
                responder subscription, closed loop",
        run: Measures::RoundTrip(rivals::nats::run_request),
        in_all: true,
    },
    #[cfg(feature = "nats")]
    Scenario {
        name: rivals::nats::PUBLISH_NAME,
        system: systems::NATS,
        setup: rivals::nats::PUBLISH_SETUP,
        about: "NATS one-way publish -> subscriber latency to 1 and 8 subscriber connections \
                (closed loop on the subscribers' acks)",
        run: Measures::OneWay(rivals::nats::run_publish),
        in_all: true,
    },
    #[cfg(feature = "nats")]
    Scenario {
        name: rivals::nats::THROUGHPUT_NAME,
        system: systems::NATS,
        setup: rivals::nats::THROUGHPUT_SETUP,
        about: "NATS msgs/s delivered to one subscriber (pubsub) and to a 2-member queue \
                group (p2p), 64 B, 1 KiB, 64 KiB",
        run: Measures::Throughput(rivals::nats::run_throughput),
        in_all: true,
    },
    #[cfg(feature = "zmq")]
    Scenario {
        name: rivals::zmq::REQUEST_NAME,
        system: systems::ZMQ,
        setup: rivals::zmq::REQUEST_SETUP,
        about: "ZeroMQ (libzmq) REQ/REP: request echoed by the REP socket, closed loop",
        run: Measures::RoundTrip(rivals::zmq::run_request),
        in_all: true,
    },
    #[cfg(feature = "zmq")]
    Scenario {
        name: rivals::zmq::PUBLISH_NAME,
        system: systems::ZMQ,
        setup: rivals::zmq::PUBLISH_SETUP,
        about: "ZeroMQ PUB/SUB one-way latency to 1 and 8 SUB sockets (closed loop on \
                PUSH/PULL acks)",
        run: Measures::OneWay(rivals::zmq::run_publish),
        in_all: true,
    },
    #[cfg(feature = "zmq")]
    Scenario {
        name: rivals::zmq::THROUGHPUT_NAME,
        system: systems::ZMQ,
        setup: rivals::zmq::THROUGHPUT_SETUP,
        about: "ZeroMQ msgs/s delivered PUB -> SUB and PUSH -> PULL, 64 B, 1 KiB, 64 KiB",
        run: Measures::Throughput(rivals::zmq::run_throughput),
        in_all: true,
    },
    #[cfg(feature = "zenoh")]
    Scenario {
        name: rivals::zenoh::request::NAME,
        system: systems::ZENOH,
        setup: rivals::zenoh::REQUEST_SETUP,
        about: "Zenoh put/subscriber ping-pong (z_ping/z_pong), tcp, tcp-ll, quic, quic-ll",
        run: Measures::RoundTrip(rivals::zenoh::request::run),
        in_all: true,
    },
    #[cfg(feature = "zenoh")]
    Scenario {
        name: rivals::zenoh::publish::NAME,
        system: systems::ZENOH,
        setup: rivals::zenoh::PUBLISH_SETUP,
        about: "Zenoh one-way put -> subscriber latency to 1 and 8 subscriber sessions \
                (closed loop on an untimed ack), every variant",
        run: Measures::OneWay(rivals::zenoh::publish::run),
        in_all: true,
    },
    #[cfg(feature = "zenoh")]
    Scenario {
        name: rivals::zenoh::throughput::NAME,
        system: systems::ZENOH,
        setup: rivals::zenoh::THROUGHPUT_SETUP,
        about: "Zenoh put -> subscriber msgs/s counted at the subscriber, tcp and quic, \
                64 B, 1 KiB, 64 KiB",
        run: Measures::Throughput(rivals::zenoh::throughput::run),
        in_all: true,
    },
    #[cfg(feature = "libp2p")]
    Scenario {
        name: rivals::libp2p::REQUEST_NAME,
        system: systems::LIBP2P,
        setup: rivals::libp2p::SETUP,
        about: "rust-libp2p request-response over QUIC: request of --payload bytes echoed \
                back, one new QUIC stream per request, closed loop",
        run: Measures::RoundTrip(rivals::libp2p::run_request),
        in_all: true,
    },
    #[cfg(feature = "libp2p")]
    Scenario {
        name: rivals::libp2p::THROUGHPUT_NAME,
        system: systems::LIBP2P,
        setup: rivals::libp2p::SETUP,
        about: "rust-libp2p request-response over QUIC, 64 requests in flight, empty \
                responses: requests/s answered (libp2p-p2p-64, -1024, -65536) against \
                quinn-batch-<payload>",
        run: Measures::Throughput(rivals::libp2p::run_throughput),
        in_all: true,
    },
];
