//! Flags shared by every command that runs a node, and how they become a running node.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use shoal::discovery::{DnsSdConfig, InterfaceSelector, MdnsConfig};
use shoal::{
    Identity, MeshCa, MulticastConfig, Node, NodeBuilder, NodeEvent, RevocationList, Revocations,
};
use tokio::sync::broadcast;

use crate::{CliError, CliResult};

/// The flags of every node: whom it trusts, who it is, where it listens, whom it dials.
#[derive(Debug, Clone, Args)]
pub(crate) struct NodeArgs {
    /// The mesh CA to trust: a folder made by `shoal ca init` (its ca.pem), or a ca.pem file.
    /// Repeat to trust several side by side (a CA rollover); the first one's folder holds the
    /// default certificate files.
    #[arg(long, value_name = "DIR", required = true)]
    pub(crate) ca: Vec<PathBuf>,
    /// A revocation list to enforce (PEM, from `shoal cert revoke`), signed by a trusted CA.
    /// Repeatable. Each CA folder's revoked.crl is enforced too, when it exists.
    #[arg(long = "crl", value_name = "FILE")]
    pub(crate) crls: Vec<PathBuf>,
    /// This node's certificate (PEM) [default: <CA folder>/<service>.pem].
    #[arg(long, value_name = "FILE", requires = "key")]
    pub(crate) cert: Option<PathBuf>,
    /// This node's private key (PEM) [default: <CA folder>/<service>.key].
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// UDP address to accept QUIC connections on [default: 127.0.0.1:0, loopback only; with
    /// --mdns 0.0.0.0:0, since discovered peers are on the LAN]. Name a LAN address to be
    /// reachable from other hosts.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,
    /// A peer to dial (IP:PORT), redialled whenever the connection drops. Repeatable.
    #[arg(long = "peer", value_name = "ADDR")]
    pub(crate) peers: Vec<SocketAddr>,
    /// Discover peers by mDNS on this interface (repeatable; `lo` for this host only). Off
    /// unless given: mDNS uses only the interfaces named here.
    #[arg(long = "mdns", value_name = "IFACE")]
    pub(crate) mdns: Vec<String>,
    /// Allow mDNS in the host's own network namespace. Without it mDNS runs only inside a
    /// network namespace (as in the demo), because mdns-sd briefly joins the multicast group on
    /// every interface when it starts. Pass it on a real LAN host.
    #[arg(long, requires = "mdns")]
    pub(crate) mdns_on_host: bool,
    /// Discover peers from DNS-SD records served by a unicast DNS server: browse
    /// `_shoal._udp.DOMAIN` (PTR, then each instance's SRV and TXT records). Repeatable.
    #[arg(long = "dns-sd", value_name = "DOMAIN")]
    pub(crate) dns_sd: Vec<String>,
    /// The DNS server for --dns-sd (IP:PORT) [default: the system's, from /etc/resolv.conf].
    #[arg(long, value_name = "ADDR", requires = "dns_sd")]
    pub(crate) dns_server: Option<SocketAddr>,
    /// Dial every instance discovery announces at once and keep the connection (a full mesh),
    /// instead of connecting on first use.
    #[arg(long)]
    pub(crate) connect_on_discovery: bool,
    /// Close a connection this node dialled after it stayed unused this long, in seconds;
    /// 0 keeps connections [default: 30].
    #[arg(long, value_name = "SECS")]
    pub(crate) close_idle_after: Option<u64>,
    /// Poll for network input this long after each message instead of sleeping (e.g.
    /// `1ms`, `500us`): round trips without thread wake-ups, for a core kept busy while it
    /// polls. Both ends of a hop have to poll (README, "Busy polling"). `0s` turns busy
    /// polling off, also the default polling under load [default: off; see
    /// --busy-poll-under-load].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          conflicts_with = "busy_poll_under_load")]
    pub(crate) busy_poll: Option<Duration>,
    /// Poll for network input this long after each message only once messages travel in
    /// batches (a frame read held two or more, or a write took two or more); one message at
    /// a time never polls. `0s` turns it off [default: 20us].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) busy_poll_under_load: Option<Duration>,
}

impl NodeArgs {
    /// A builder for a node of `service` with these flags' trust, identity, listen address and
    /// peers. Without `--cert/--key` the identity is read from `<CA folder>/<service>.pem/.key`;
    /// if those do not exist and `ephemeral` is set, a throwaway certificate is issued from the
    /// CA key, when the CA folder has one.
    pub(crate) fn builder(&self, service: &str, ephemeral: bool) -> CliResult<NodeBuilder> {
        let cas = self
            .ca
            .iter()
            .map(|path| load_ca(path))
            .collect::<CliResult<Vec<MeshCa>>>()?;
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Identity::load(cert, key)?,
            _ => default_identity(&cas[0], &self.home(), service, ephemeral)?,
        };
        // Nodes need only the CA certificates; drop the keys as soon as they are not needed.
        let trust = cas
            .iter()
            .map(|ca| MeshCa::from_pem(&ca.cert_pem()))
            .collect::<Result<Vec<MeshCa>, _>>()?;
        let files = self.tls_files(service);
        let revocations = Revocations::new();
        revocations.replace_with_lists(&files.load_lists(&trust)?);
        let mut builder = Node::builder(service)
            .identity(identity)
            .revocations(revocations)
            .listen(self.listen_addr())
            .peers(self.peers.iter().copied())
            .connect_on_discovery(self.connect_on_discovery);
        if let Some(secs) = self.close_idle_after {
            // 0 keeps connections: the builder's `None` (it refuses `Some(ZERO)`).
            let after = (secs > 0).then(|| Duration::from_secs(secs));
            builder = builder.close_idle_after(after);
        }
        if let Some(window) = self.busy_poll {
            builder = builder.busy_poll(window);
        }
        if let Some(window) = self.busy_poll_under_load {
            builder = builder.busy_poll_under_load(window);
        }
        for ca in trust {
            builder = builder.trust(ca);
        }
        if !self.mdns.is_empty() {
            let interfaces = self.mdns.iter().map(InterfaceSelector::name);
            builder = builder.discovery(
                MdnsConfig::new(interfaces)
                    .allow_root_netns(self.mdns_on_host)
                    .build(),
            );
        }
        for domain in &self.dns_sd {
            let mut config = DnsSdConfig::browse(domain.as_str());
            if let Some(server) = self.dns_server {
                config = config.server(server);
            }
            builder = builder.discovery(config.build());
        }
        Ok(builder)
    }

    /// `--listen`, or its default: loopback, or every interface when mDNS finds LAN peers.
    pub(crate) fn listen_addr(&self) -> SocketAddr {
        let any = if self.mdns.is_empty() {
            [127, 0, 0, 1]
        } else {
            [0, 0, 0, 0]
        };
        self.listen.unwrap_or(SocketAddr::from((any, 0)))
    }

    /// The folder default certificate files are looked for in: the first `--ca` folder, or
    /// the folder of the first `--ca` file.
    fn home(&self) -> PathBuf {
        let first = &self.ca[0];
        if first.is_dir() {
            first.clone()
        } else {
            first.parent().map(Path::to_path_buf).unwrap_or_default()
        }
    }

    /// The files this node's TLS material comes from, for a node of `service`.
    pub(crate) fn tls_files(&self, service: &str) -> TlsFiles {
        let home = self.home();
        let (cert, key) = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => (
                home.join(format!("{service}.pem")),
                home.join(format!("{service}.key")),
            ),
        };
        let dirs = self.ca.iter().filter(|path| path.is_dir());
        let default_lists = dirs.clone().map(|dir| dir.join(RevocationList::FILE));
        TlsFiles {
            cert,
            key,
            cas: self
                .ca
                .iter()
                .map(|path| {
                    if path.is_dir() {
                        path.join(MeshCa::CERT_FILE)
                    } else {
                        path.clone()
                    }
                })
                .collect(),
            lists: self.crls.clone(),
            default_lists: default_lists.collect(),
        }
    }
}

/// Where a node's certificate, key, trusted CAs and revocation lists are read from
/// (`shoal serve` reads them again when they change).
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    /// The CA certificates (`ca.pem`) to trust.
    pub(crate) cas: Vec<PathBuf>,
    /// Lists named by `--crl`: they must exist.
    pub(crate) lists: Vec<PathBuf>,
    /// Each CA folder's `revoked.crl`, read when it exists.
    pub(crate) default_lists: Vec<PathBuf>,
}

impl TlsFiles {
    /// Every file, in a fixed order (to notice changes).
    pub(crate) fn all(&self) -> Vec<&Path> {
        [&self.cert, &self.key]
            .into_iter()
            .chain(&self.cas)
            .chain(&self.lists)
            .chain(&self.default_lists)
            .map(PathBuf::as_path)
            .collect()
    }

    /// The CAs to trust (certificates only).
    pub(crate) fn load_trust(&self) -> CliResult<Vec<MeshCa>> {
        Ok(self
            .cas
            .iter()
            .map(MeshCa::load_cert)
            .collect::<Result<_, _>>()?)
    }

    /// The node's certificate and key.
    pub(crate) fn load_identity(&self) -> CliResult<Identity> {
        Ok(Identity::load(&self.cert, &self.key)?)
    }

    /// Every revocation list's file, with whether it must exist: each `--crl` file (it must)
    /// and each CA folder's `revoked.crl` (read when it exists).
    pub(crate) fn list_paths(&self) -> impl Iterator<Item = (&Path, bool)> {
        let named = self.lists.iter().map(|path| (path.as_path(), true));
        let defaults = self
            .default_lists
            .iter()
            .map(|path| (path.as_path(), false));
        named.chain(defaults)
    }

    /// The revocation lists at start, each checked against `trust`: a missing `--crl` file is
    /// an error, a missing default list is no list. (While watching, `reload` reads them one
    /// by one and keeps the last good one of a file it cannot read.)
    pub(crate) fn load_lists(&self, trust: &[MeshCa]) -> CliResult<Vec<RevocationList>> {
        let mut lists = Vec::new();
        for (path, required) in self.list_paths() {
            if !required && !path.exists() {
                continue;
            }
            lists.push(RevocationList::load(path, trust)?);
        }
        Ok(lists)
    }
}

/// A CA from `--ca`: a folder (with its key, if it holds one) or a `ca.pem` file.
fn load_ca(path: &Path) -> CliResult<MeshCa> {
    let meta = fs::metadata(path)
        .map_err(|e| CliError::new(format!("cannot read the mesh CA {}: {e}", path.display())))?;
    if meta.is_dir() {
        Ok(MeshCa::load(path)?)
    } else {
        Ok(MeshCa::load_cert(path)?)
    }
}

/// The identity in `<dir>/<service>.pem/.key`, or with `ephemeral` one issued on the spot.
fn default_identity(
    ca: &MeshCa,
    dir: &Path,
    service: &str,
    ephemeral: bool,
) -> CliResult<Identity> {
    let cert = dir.join(format!("{service}.pem"));
    let key = dir.join(format!("{service}.key"));
    if cert.exists() || key.exists() {
        return Ok(Identity::load(&cert, &key)?);
    }
    if ephemeral && ca.can_issue() {
        tracing::info!(service, "issuing an ephemeral certificate from the CA key");
        return Ok(ca.issue(service)?);
    }
    let how = if ephemeral {
        format!(
            "pass --cert and --key, put {service}.pem and {service}.key in {dir}, or use a CA \
             folder that holds {} so one can be issued on the fly",
            MeshCa::KEY_FILE,
            dir = dir.display()
        )
    } else {
        format!(
            "issue one with `shoal cert issue --ca {dir} --service {service}` or pass --cert \
             and --key",
            dir = dir.display()
        )
    };
    Err(CliError::new(format!(
        "no certificate for service `{service}`: {} does not exist; {how}",
        cert.display()
    )))
}

/// The multicast flags of `shoal serve` and `shoal publish` (README, "Multicast fan-out").
#[derive(Debug, Clone, Args)]
pub(crate) struct MulticastArgs {
    /// Fan published events out by multicast on this LAN interface (e.g. eth1): one encrypted
    /// datagram per event for every subscriber on the LAN, repaired when lost. Off unless
    /// given; every node of the mesh on the LAN should name it.
    #[arg(long = "multicast", value_name = "IFACE")]
    pub(crate) interface: Option<String>,
    /// The multicast group and port, the same on every node [default: 239.255.83.72:7451].
    #[arg(
        long = "multicast-group",
        value_name = "ADDR:PORT",
        requires = "interface"
    )]
    pub(crate) group: Option<std::net::SocketAddrV4>,
}

impl MulticastArgs {
    /// `builder` with multicast turned on, when `--multicast` was given.
    pub(crate) fn apply(&self, builder: NodeBuilder) -> NodeBuilder {
        let Some(interface) = &self.interface else {
            return builder;
        };
        let mut config = MulticastConfig::new(interface.as_str());
        if let Some(group) = self.group {
            config = config.group(*group.ip()).port(group.port());
        }
        builder.multicast(config)
    }

    /// Prints `multicast sent=… rekeys=…` (the node's multicast counters), when `--multicast`
    /// was given.
    pub(crate) fn report(&self, node: &Node) {
        if self.interface.is_none() {
            return;
        }
        let s = node.stats();
        say!(
            "multicast sent={} events={} received={} dropped={} forged={} repairs={} demotions={} rekeys={}",
            s.multicast_sent,
            s.multicast_events,
            s.multicast_received,
            s.multicast_dropped,
            s.multicast_forged,
            s.multicast_repairs,
            s.multicast_demotions,
            s.multicast_rekeys,
        );
    }
}

/// The flags of the client commands (send, request, ping, peers): a node of their own that
/// dials the given peers.
#[derive(Debug, Clone, Args)]
pub(crate) struct ClientArgs {
    #[command(flatten)]
    pub(crate) node: NodeArgs,
    /// The service this client's own node runs as. Without --cert/--key its certificate is
    /// read from <CA folder>/NAME.pem/.key or, if those do not exist and the CA folder holds
    /// ca.key, an ephemeral one is issued from the CA on the fly (never written to disk).
    #[arg(long = "as", value_name = "NAME", default_value = "shoal-cli")]
    pub(crate) as_service: String,
    /// How long to wait for a connection, in milliseconds [default: 5000; peers: 1000].
    #[arg(long, value_name = "MS")]
    pub(crate) wait: Option<u64>,
}

impl ClientArgs {
    /// Starts the client's node, subscribed to its events before any connection is made.
    pub(crate) async fn start(&self) -> CliResult<(Node, broadcast::Receiver<NodeEvent>)> {
        self.start_with(|builder| builder).await
    }

    /// [`ClientArgs::start`], with `configure` applied to the builder first.
    pub(crate) async fn start_with(
        &self,
        configure: impl FnOnce(NodeBuilder) -> NodeBuilder,
    ) -> CliResult<(Node, broadcast::Receiver<NodeEvent>)> {
        if self.node.peers.is_empty() && self.node.mdns.is_empty() && self.node.dns_sd.is_empty() {
            return Err(CliError::new(
                "no peers to connect to: pass --peer ADDR (the address `shoal serve` printed) \
                 or --mdns IFACE or --dns-sd DOMAIN",
            ));
        }
        let builder = self
            .node
            .builder(&self.as_service, true)?
            .shutdown_grace(Duration::from_secs(1));
        let node = configure(builder).start().await?;
        // `start` only spawns the diallers; on this single-threaded runtime they have not run
        // yet, so no event is missed.
        let events = node.events();
        Ok((node, events))
    }

    /// `--wait`, or `default_ms`.
    pub(crate) fn wait_or(&self, default_ms: u64) -> Duration {
        Duration::from_millis(self.wait.unwrap_or(default_ms))
    }
}

/// Waits until an instance of `service` is connected, at most `wait`. On timeout the error
/// says what happened instead: the last refused handshake, or which other services answered.
pub(crate) async fn wait_for_service(
    node: &Node,
    events: &mut broadcast::Receiver<NodeEvent>,
    service: &str,
    wait: Duration,
) -> CliResult {
    let mut last_failure = None;
    let ready = node.wait_for_instances(service, 1, wait);
    tokio::pin!(ready);
    let mut listening = true;
    loop {
        tokio::select! {
            ready = &mut ready => match ready {
                Ok(()) => return Ok(()),
                Err(shoal::Error::WaitTimedOut { .. }) => break,
                Err(e) => return Err(e.into()),
            },
            event = events.recv(), if listening => match event {
                Ok(NodeEvent::HandshakeFailed { addr, reason }) => {
                    last_failure = Some(format!("{addr}: {reason}"));
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => listening = false,
            },
        }
    }
    let others: Vec<String> = node
        .peers()
        .iter()
        .map(|p| format!("`{}` at {}", p.service, p.addr))
        .collect();
    let hint = match (last_failure, others.is_empty()) {
        (Some(failure), _) => format!("; last failure: {failure}"),
        (None, false) => format!("; connected instead to {}", others.join(", ")),
        (None, true) => String::from("; no answer from the peers"),
    };
    Err(CliError::new(format!(
        "no instance of `{service}` connected within {} ms{hint}",
        wait.as_millis()
    )))
}

/// Parses `KEY=VALUE` (for `--header`).
pub(crate) fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// Formats a duration as microseconds, e.g. `412µs`.
pub(crate) fn micros(d: Duration) -> String {
    format!("{}µs", d.as_micros())
}
