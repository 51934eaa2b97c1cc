//! What the folder needs, decided again: a whole-folder recompute a page at a time, and the paths
//! the Puller hands back (held needs taken, retries due, pulls overtaken).

use actix::prelude::*;

use super::IndexActor;
use crate::actors::messages::RecomputePaths;
use crate::index::{needs_at, needs_page};

/// One step of a whole-folder recompute (`IndexActor::recompute`): the paths after `after`.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct RecomputeStep {
    pub(super) folder: String,
    pub(super) generation: u64,
    pub(super) after: Option<String>,
    pub(super) started: std::time::Instant,
    pub(super) needs: usize,
}

impl Handler<RecomputeStep> for IndexActor {
    type Result = ();
    fn handle(&mut self, mut msg: RecomputeStep, ctx: &mut Context<Self>) {
        if self.folders.get(&msg.folder).is_none_or(|s| !s.rules.recompute_current(msg.generation)) {
            return;
        }
        let folder = msg.folder.as_str();
        let Some((items, next)) = needs_page(&self.store, &self.folders[folder].config, msg.after.as_deref()) else {
            return;
        };
        msg.needs += items.len();
        self.dispatch(folder, items, msg.after.is_none(), Vec::new());
        match next {
            Some(next) => {
                msg.after = Some(next);
                ctx.notify(msg);
            }
            None => {
                tracing::debug!(
                    folder,
                    needs = msg.needs,
                    ms = msg.started.elapsed().as_millis() as u64,
                    "needs recomputed"
                )
            }
        }
    }
}

impl Handler<RecomputePaths> for IndexActor {
    type Result = ();
    fn handle(&mut self, msg: RecomputePaths, _: &mut Context<Self>) {
        let Some(state) = self.folders.get(&msg.folder) else { return };
        let items = needs_at(&self.store, &state.config, &msg.paths);
        self.dispatch(&msg.folder, items, false, msg.paths);
    }
}
