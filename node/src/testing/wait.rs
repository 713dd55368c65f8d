//! The waits of a [`TestMesh`]: for a recorded message ([`TestMesh::expect`]), for none
//! ([`TestMesh::expect_none`]), for the mesh to go idle, for a service to be ready, for a
//! killed node to be gone. Each one looks again when something happens (a message recorded,
//! a call into any node's engine) and gives up at its time limit: nothing polls, nothing
//! sleeps a guessed time.

use std::sync::Arc;
use std::time::Duration;

use super::expect::{Expect, ExpectationFailed, Failure};
use super::mesh::TestMesh;
use super::recording::Recorded;
use crate::sync::lock;
use crate::{Error, Node};

impl TestMesh {
    // ---------------------------------------------------------------------------------------
    // Expectations

    /// Waits for a message `expect` describes, at most its [`within`](Expect::within) (the
    /// mesh's timeout otherwise), and returns it. Each recorded message satisfies one `expect`
    /// only: expect the same thing twice to wait for two. Fails with
    /// [`Error::Expectation`] listing everything the probe saw.
    pub async fn expect(&self, expect: Expect) -> Result<Recorded, Error> {
        let within = expect.within.unwrap_or(self.shared.timeout);
        let deadline = crate::runtime::Driver::deadline_in(within);
        loop {
            let added = self.shared.recording.added();
            tokio::pin!(added);
            added.as_mut().enable();
            if let Some(found) = self.shared.recording.claim(&expect) {
                return Ok(found);
            }
            tokio::select! {
                () = added => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(self.failed(expect.to_string(), within, Failure::NotSeen));
                }
            }
        }
    }

    /// Checks that no message `expect` describes comes within its
    /// [`within`](Expect::within) (200 ms otherwise, see
    /// [`TestMeshBuilder::quiet_window`](super::TestMeshBuilder::quiet_window)), nor came
    /// before without being claimed by an [`expect`](Self::expect). Call
    /// [`wait_idle`](Self::wait_idle) first when what is not wanted would follow from work
    /// still going on.
    pub async fn expect_none(&self, expect: Expect) -> Result<(), Error> {
        let within = expect.within.unwrap_or(self.shared.quiet);
        let deadline = crate::runtime::Driver::deadline_in(within);
        loop {
            let added = self.shared.recording.added();
            tokio::pin!(added);
            added.as_mut().enable();
            let found = self.shared.recording.unclaimed(&expect);
            if !found.is_empty() {
                let failure = Failure::Unexpected(found);
                return Err(self.failed(expect.to_string(), within, failure));
            }
            tokio::select! {
                () = added => {}
                () = tokio::time::sleep_until(deadline) => return Ok(()),
            }
        }
    }

    /// Everything the probe recorded so far, in order.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.shared.recording.all()
    }

    /// Waits until the whole mesh is idle: on every running node of the mesh no handler
    /// runs, no delivery is unacknowledged or waiting (for a retry, an instance, a turn), no
    /// request waits for its reply, nothing waits to be written, no faulted frame is held
    /// back, and no row of its outbox is pending (rows held for an expected subscriber group
    /// that is away count: they are work still to do). Since a sender's delivery stays open
    /// until the receiver's ack is read, nothing reliable is in flight between the nodes
    /// then either.
    ///
    /// What the nodes cannot see is not waited for: work a handler started in a task of its
    /// own, best-effort events on the wire.
    pub async fn wait_idle(&self) -> Result<(), Error> {
        self.until("the mesh to be idle".into(), self.shared.timeout, || {
            let busy: Vec<String> = self
                .live()
                .iter()
                .filter_map(|(hooks, driver)| {
                    let b = driver.read(|e| e.busy());
                    let held = hooks.held();
                    let outbox = outbox_pending(driver);
                    (!b.is_idle() || held > 0 || outbox > 0).then(|| {
                        format!(
                            "`{}` ({}) has {} handler run(s), {} open deliveries, {} \
                             unanswered request(s) or ping(s), {} connection(s) with unwritten \
                             frames, {} frame(s) held back by a fault, {} outbox row(s) pending",
                            driver.service,
                            driver.id,
                            b.handlers,
                            b.deliveries,
                            b.answers,
                            b.unwritten,
                            held,
                            outbox
                        )
                    })
                })
                .collect();
            if busy.is_empty() {
                Ok(())
            } else {
                Err(busy.join("; "))
            }
        })
        .await
    }

    // ---------------------------------------------------------------------------------------
    // Nodes

    /// Waits until the probe is connected to an instance of `service`, and that instance
    /// knows the probe's subscriptions and sees every stand-in: from then on what it
    /// publishes or sends reaches the probe.
    pub async fn wait_for(&self, service: &str) -> Result<(), Error> {
        self.wait_for_instances(service, 1).await
    }

    /// [`wait_for`](Self::wait_for) `count` instances.
    pub async fn wait_for_instances(&self, service: &str, count: usize) -> Result<(), Error> {
        let probe = Arc::clone(self.probe.driver());
        let subs: Vec<shoal_proto::Subscription> = lock(&self.subscriptions)
            .iter()
            .map(|(s, _)| s.clone())
            .collect();
        let stand_ins = lock(&self.stand_ins).clone();
        let expected = format!("{count} instance(s) of `{service}` ready");
        self.until(expected, self.shared.timeout, || {
            let seen = probe.read(|e| {
                e.peers()
                    .into_iter()
                    .filter(|p| p.service == service)
                    .map(|p| p.node)
                    .collect::<Vec<_>>()
            });
            if seen.len() < count {
                return Err(format!("the probe sees {} instance(s)", seen.len()));
            }
            for (_, driver) in self.live() {
                if driver.service != service {
                    continue;
                }
                for sub in &subs {
                    if !driver.read(|e| e.peer_subscribes(probe.id, sub)) {
                        return Err(format!(
                            "{} does not know the probe subscribes to `{}` yet",
                            driver.id, sub.pattern
                        ));
                    }
                }
                // (A stand-in waited for itself needs no other stand-in of its name.)
                for stand_in in stand_ins.iter().filter(|s| *s != service) {
                    if !driver.read(|e| e.peers().iter().any(|p| p.service == *stand_in)) {
                        return Err(format!("{} sees no `{stand_in}` yet", driver.id));
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// Stops `node` at once, as a crash would ([`Node::abort`]: no goodbyes, running handlers
    /// dropped, unsent acks lost; an outbox database stays on disk), and waits until no node
    /// of the mesh is connected to it any more. Restart it from
    /// [`builder`](Self::builder) with the same database: it goes on from there.
    pub async fn kill(&self, node: &Node) -> Result<(), Error> {
        node.abort();
        let id = node.id();
        let expected = format!("every node to see `{}` ({id}) gone", node.service());
        self.until(expected, self.shared.timeout, || {
            for (_, driver) in self.live() {
                if driver.read(|e| e.peers().iter().any(|p| p.node == id)) {
                    return Err(format!("`{}` is still connected to it", driver.service));
                }
            }
            Ok(())
        })
        .await
    }

    /// The failure of an expectation, with everything the probe saw.
    pub(crate) fn failed(&self, expected: String, within: Duration, failure: Failure) -> Error {
        Error::Expectation(Box::new(ExpectationFailed {
            expected,
            within,
            failure,
            seen: self.shared.recording.snapshot(),
            seed: self.shared.seed,
        }))
    }

    /// Waits until `check` passes, looking again after every call into any node's engine,
    /// at most `within`. `check` says what is still missing; it must only read the engines
    /// (a call into one would wake this wait again at once).
    pub(crate) async fn until(
        &self,
        expected: String,
        within: Duration,
        mut check: impl FnMut() -> Result<(), String>,
    ) -> Result<(), Error> {
        let deadline = crate::runtime::Driver::deadline_in(within);
        loop {
            let activity = self.shared.activity.notified();
            tokio::pin!(activity);
            activity.as_mut().enable();
            let missing = match check() {
                Ok(()) => return Ok(()),
                Err(missing) => missing,
            };
            tokio::select! {
                () = activity => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(self.failed(expected, within, Failure::NotReady(missing)));
                }
            }
        }
    }
}

/// The rows pending in the node's outbox (0 without one; a store that cannot say counts as
/// busy, so the wait ends in a report rather than a false idle).
fn outbox_pending(driver: &crate::runtime::Driver) -> u64 {
    #[cfg(feature = "outbox")]
    if let Some(store) = driver.outbox.get() {
        return store.stats().map_or(1, |s| s.pending);
    }
    let _ = driver;
    0
}
