//! Connections to the engines. Both clients reconnect by themselves: async-nats
//! resubscribes after a NATS restart, and Redis connections come back on the next command.

use crate::ClusterError;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, Pipeline, RedisFuture, Value};
use std::time::Duration;
use xinge_core::config::ClusterConfig;

/// Connects to NATS, failing if no server answers now (a role should not start blind).
pub async fn nats(cfg: &ClusterConfig, name: &str) -> Result<async_nats::Client, ClusterError> {
    let servers: Vec<&str> = cfg.nats_url.split(',').map(str::trim).collect();
    async_nats::ConnectOptions::new()
        .name(name)
        .request_timeout(Some(Duration::from_millis(cfg.request_timeout_ms)))
        .connection_timeout(Duration::from_secs(5))
        // Retry forever after the first connection: a NATS restart must not end a role.
        .max_reconnects(None)
        .connect(servers)
        .await
        .map_err(ClusterError::nats)
        .inspect(|client| {
            tokio::spawn(count_traffic(client.statistics()));
        })
}

/// Adds what the client's own counters gained, four times a second, to `xinge_nats_messages_total`
/// and `xinge_nats_bytes_total` (by `dir`, in or out): the bus traffic a role causes,
/// which says what a message costs NATS. Runs for the process's life; it holds the
/// counters, not the client.
async fn count_traffic(stats: std::sync::Arc<async_nats::Statistics>) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last = [0u64; 4];
    loop {
        tick.tick().await;
        let now = [
            stats.in_messages.load(Relaxed),
            stats.out_messages.load(Relaxed),
            stats.in_bytes.load(Relaxed),
            stats.out_bytes.load(Relaxed),
        ];
        let gained = |i: usize| now[i].saturating_sub(last[i]);
        metrics::counter!("xinge_nats_messages_total", "dir" => "in").increment(gained(0));
        metrics::counter!("xinge_nats_messages_total", "dir" => "out").increment(gained(1));
        metrics::counter!("xinge_nats_bytes_total", "dir" => "in").increment(gained(2));
        metrics::counter!("xinge_nats_bytes_total", "dir" => "out").increment(gained(3));
        last = now;
    }
}

/// One Redis node, or a Redis Cluster (several URLs).
#[derive(Clone)]
pub enum Redis {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Redis {
    pub async fn connect(urls: &str) -> Result<Self, ClusterError> {
        let urls: Vec<&str> = urls.split(',').map(str::trim).collect();
        if urls.len() > 1 {
            let client = redis::cluster::ClusterClientBuilder::new(urls)
                .connection_timeout(Duration::from_secs(2))
                .response_timeout(Duration::from_secs(2))
                .build()?;
            return Ok(Self::Cluster(client.get_async_connection().await?));
        }
        let client = redis::Client::open(urls[0])?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_max_delay(Duration::from_secs(1));
        Ok(Self::Single(
            ConnectionManager::new_with_config(client, cfg).await?,
        ))
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Redis::Single(c) => c.req_packed_command(cmd),
            Redis::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Redis::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Redis::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Redis::Single(c) => c.get_db(),
            Redis::Cluster(c) => c.get_db(),
        }
    }
}
