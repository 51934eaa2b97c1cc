//! The VersionCleaner actor: runs each folder's version-store cleanup (`fs::versions`) on a
//! blocking thread, at start and then every `EVERY`, never two passes of one store at once; a store
//! that grew past its size cap is trimmed within `CHECK_CAP`. When a size cap has not settled (it
//! cuts in finer steps each pass), the next pass follows after `AGAIN`. The actor thread only keeps the schedule; the store's walk never runs on it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::now_millis;
use crate::fs::versions::VersionStore;

const EVERY: Duration = Duration::from_secs(600);
const AGAIN: Duration = Duration::from_secs(1);
/// How often the stores' sizes (two counters, no disk access) are compared with their caps: a
/// burst of versions past `max_size` is trimmed within seconds, not at the next regular pass.
const CHECK_CAP: Duration = Duration::from_secs(10);

pub struct VersionCleaner {
    stores: HashMap<String, Arc<VersionStore>>,
    running: HashSet<String>,
}

impl VersionCleaner {
    pub fn new(stores: HashMap<String, Arc<VersionStore>>) -> Self {
        VersionCleaner { stores, running: HashSet::new() }
    }

    fn pass(&mut self, folder: String, ctx: &mut Context<Self>) {
        let Some(store) = self.stores.get(&folder).cloned() else { return };
        if !self.running.insert(folder.clone()) {
            return;
        }
        let me = ctx.address();
        tokio::task::spawn_blocking(move || {
            let report = store.cleanup(now_millis());
            match &report {
                Ok(r) if r.removed > 0 => {
                    tracing::info!(folder = %folder, removed = r.removed, kept = r.files, bytes = r.bytes, "old versions removed")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(folder = %folder, error = %e, "version cleanup failed"),
            }
            me.do_send(PassDone { folder, again: report.is_ok_and(|r| r.again) });
        });
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct PassDone {
    folder: String,
    again: bool,
}

impl Actor for VersionCleaner {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let all = |this: &mut Self, ctx: &mut Context<Self>| {
            let folders: Vec<String> = this.stores.keys().cloned().collect();
            folders.into_iter().for_each(|f| this.pass(f, ctx));
        };
        all(self, ctx);
        ctx.run_interval(EVERY, all);
        ctx.run_interval(CHECK_CAP, |this, ctx| {
            let over: Vec<String> = this
                .stores
                .iter()
                .filter(|(_, s)| s.policy().max_size.is_some_and(|max| s.usage().1 > max))
                .map(|(f, _)| f.clone())
                .collect();
            over.into_iter().for_each(|f| this.pass(f, ctx));
        });
    }
}

impl Handler<PassDone> for VersionCleaner {
    type Result = ();
    fn handle(&mut self, msg: PassDone, ctx: &mut Context<Self>) {
        self.running.remove(&msg.folder);
        if msg.again {
            ctx.run_later(AGAIN, move |this, ctx| this.pass(msg.folder, ctx));
        }
    }
}
