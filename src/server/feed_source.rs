//! The engine as the feed's [`Source`]: `feed/` does not import the engine, so the server,
//! which knows both, connects them.

use std::sync::Arc;

use crate::domain::{Catalog, SkuId, SkuView};
use crate::engine::{Engine, Failure};
use crate::feed::hub::Hub;
use crate::feed::subscription::Source;

impl Source for Engine {
    fn catalog(&self) -> Arc<Catalog> {
        Engine::catalog(self)
    }

    fn feed(&self) -> &Arc<Hub> {
        Engine::feed(self)
    }

    fn feed_position(&self, name: &str) -> Option<u64> {
        Engine::feed_position(self, name)
    }

    fn last_seq(&self) -> u64 {
        Engine::last_seq(self)
    }

    fn sku_ids(&self, prefix: &str) -> Vec<SkuId> {
        Engine::sku_ids(self, prefix)
    }

    async fn sku_view(&self, sku: &SkuId) -> Result<Option<SkuView>, String> {
        match self.get_waiting(sku).await {
            Ok(v) => Ok(Some(v)),
            Err(Failure::Rejected(_)) => Ok(None),
            Err(Failure::Error(e)) => Err(e.to_string()),
        }
    }

    async fn wait_durable(&self, seq: u64) -> Result<(), String> {
        Engine::wait_durable(self, seq)
            .await
            .map_err(|e| e.to_string())
    }
}
