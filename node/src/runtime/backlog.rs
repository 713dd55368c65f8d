//! Waiting for room in the backlog of background messages (`engine/send/backlog.rs`).

use std::sync::Arc;

use super::Driver;

impl Driver {
    /// Resolves once the backlog of background messages holds at most half of each cap, or
    /// the node stops; at once if it does now.
    pub(crate) async fn wait_for_background_room(self: &Arc<Self>) {
        loop {
            // Listening before asking: room that comes between the two is not missed.
            let notified = self.room.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.call(|engine, _| engine.background_room()) {
                return;
            }
            notified.await;
        }
    }
}
