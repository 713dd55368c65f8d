//! [`NodeBuilder::start`]: checks the configuration, binds, and starts the node's tasks.

use std::net::SocketAddr;
use std::sync::Arc;

use shoal_discovery::{LocalNode, StaticDiscovery};
use shoal_proto::NodeId;

use super::NodeBuilder;
use crate::engine::Engine;
use crate::runtime::Driver;
use crate::transport::{dial, endpoint};
use crate::{Error, Node, cert_lifecycle, tls};

impl NodeBuilder {
    /// Binds the endpoint, starts discovery and dialling, and returns the running node.
    /// Must be called inside a Tokio runtime (a `current_thread` runtime gives the lowest
    /// latency).
    ///
    /// Fails with [`Error::Config`], before anything is bound or started, on a value no node
    /// can work with: each setter above says which (a zero limit, a zero or inverted
    /// [`NodeBuilder::liveness`], a zero outbox poll interval, ...).
    pub async fn start(self) -> Result<Node, Error> {
        let Self {
            service,
            listen,
            identity,
            trust,
            revocations,
            peers,
            mut discovery,
            mut config,
            #[cfg(feature = "outbox")]
            outbox,
            #[cfg(feature = "testing")]
            test_hooks,
            #[cfg(feature = "metrics")]
            metrics,
            multicast,
        } = self;
        if service.is_empty() || service.len() > config.limits.max_name_len {
            return Err(Error::Config(format!(
                "service name must be 1 to {} bytes",
                config.limits.max_name_len
            )));
        }
        config.validate()?;
        #[cfg(feature = "outbox")]
        if let Some((_, options)) = &outbox {
            options.validate()?;
        }
        let identity = identity
            .ok_or_else(|| Error::Config("no identity: call NodeBuilder::identity".into()))?;
        if trust.is_empty() {
            return Err(Error::Config("no mesh CA: call NodeBuilder::trust".into()));
        }
        if let Some(certified) = identity.service()
            && certified != service
        {
            return Err(Error::Identity(format!(
                "the certificate is for service `{certified}`, this node is `{service}`"
            )));
        }

        let transport = Arc::new(tls::transport(
            config.keep_alive,
            config.idle_timeout,
            multicast.is_some(),
        )?);
        let live_tls = tls::LiveTls::new(identity, trust, revocations)?;
        let server = tls::server_config(&live_tls, Arc::clone(&transport))?;
        let client = tls::client_config(&live_tls, transport)?;
        let socket = crate::transport::socket::bind(listen, config.socket_buffers)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| Error::Config("start must run inside a Tokio runtime".into()))?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            runtime,
        )
        .map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
        endpoint.set_default_client_config(client);
        // Opened before anything starts too: a bad interface or group fails `start`.
        let group_socket = match &multicast {
            Some(m) => {
                let socket = crate::transport::multicast::GroupSocket::open(m)?;
                let group = SocketAddr::V4(m.group_addr());
                let mut setup = crate::engine::MulticastSetup::new(group);
                // The group link says when it sent everything (runtime/multicast.rs): events
                // queued meanwhile share datagrams; under load, a datagram that is not full
                // also waits for the last one to arrive somewhere.
                setup.channel.paced = true;
                setup.channel.coalesce = true;
                config.multicast = Some(setup);
                Some(socket)
            }
            None => None,
        };

        // Bound before anything starts, so a taken address fails `start` with nothing to undo.
        #[cfg(feature = "metrics")]
        let metrics_listener = match metrics.as_ref().and_then(|m| m.listen) {
            Some(addr) => Some(crate::metrics::bind(addr).await?),
            None => None,
        };
        let id = NodeId::from_u128(rand::random());
        #[cfg_attr(not(feature = "metrics"), allow(unused_mut))]
        let mut engine = Engine::new(id, service.clone(), config.clone(), rand::random());
        #[cfg(feature = "metrics")]
        if metrics.is_some() {
            engine.enable_metrics();
        }
        let driver = Driver::new(engine, service, config, endpoint, peers.clone(), live_tls);

        #[cfg(feature = "testing")]
        if let Some(hooks) = test_hooks {
            // Before any connection exists, so every one of them sees the hooks.
            hooks.attach(&driver);
            let _ = driver.test_hooks.set(hooks);
        }
        let local = LocalNode {
            node_id: driver.id,
            service: driver.service.clone(),
            addrs: driver.endpoint.local_addr().into_iter().collect(),
            subscriptions: Vec::new(),
            multicast: driver.config.multicast_group(),
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        if !peers.is_empty() {
            discovery.insert(0, Box::new(StaticDiscovery::new(peers)));
        }
        for source in &mut discovery {
            source.start(&local, tx.clone())?;
        }
        *crate::sync::lock(&driver.discovery) = discovery;
        if let Some(socket) = group_socket {
            driver.start_multicast(socket);
        }
        driver.start_timer();
        driver.start_busy_poll();
        driver
            .tasks
            .spawn(endpoint::accept_loop(Arc::clone(&driver)));
        driver
            .tasks
            .spawn(dial::follow_discovery(Arc::clone(&driver), rx));
        tracing::info!(node = %driver.id, service = %driver.service, addr = ?local.addrs, "shoal node started");
        cert_lifecycle::spawn_tasks(&driver); // expiry warnings, closing revoked peers
        #[cfg(feature = "metrics")]
        if let Some(listener) = metrics_listener {
            crate::metrics::serve(&driver, listener);
        }
        let node = Node::from_driver(driver);
        #[cfg(feature = "outbox")]
        if let Some((store, options)) = outbox {
            let driver = node.driver();
            let _ = driver.outbox.set(Arc::clone(&store));
            let stop = driver.stopping.clone();
            let relay = crate::outbox::relay::run(node.downgrade(), store, options, stop);
            driver.tasks.spawn(relay);
        }
        Ok(node)
    }
}
