//! The route service: which gateways a client should use, best first (the nearest, then the least loaded).
//! Gateways report themselves (address, region, zone, live connections) periodically;
//! a client is offered those in its own region and zone first, then the least loaded.
//! A gateway that has not reported within `stale_after_ms` is no longer offered.

pub use xinge_core::ratelimit::Admission;

use std::collections::HashMap;
use std::sync::Mutex;
use xinge_core::GatewayId;
use xinge_proto::api::GatewayEndpoint;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GatewayReport {
    pub id: GatewayId,
    pub region: String,
    pub zone: String,
    /// `ws://host:port/ws`, if the gateway speaks WebSocket.
    pub ws_url: Option<String>,
    /// `host:port`, if the gateway speaks TCP.
    pub tcp_addr: Option<String>,
    pub connections: u64,
    pub at_ms: u64,
}

pub struct Route {
    /// Each gateway's last report, and how many clients were sent its way since.
    reports: Mutex<HashMap<GatewayId, (GatewayReport, u64)>>,
    stale_after_ms: u64,
    max_gateways: usize,
    admission: Option<Admission>,
}

impl Route {
    pub fn new(stale_after_ms: u64) -> Self {
        Self {
            reports: Mutex::new(HashMap::new()),
            stale_after_ms,
            max_gateways: 4_096,
            admission: None,
        }
    }

    /// Limits how many clients may ask for a gateway (see [`Admission`]).
    pub fn with_admission(mut self, cfg: &xinge_core::config::AdmissionConfig) -> Self {
        self.admission = Some(Admission::new(cfg));
        self
    }

    /// Admits one client from `ip`, or says when it may try again.
    pub fn admit(&self, ip: std::net::IpAddr) -> Result<(), std::time::Duration> {
        match &self.admission {
            Some(a) => a.admit(ip, std::time::Instant::now()),
            None => Ok(()),
        }
    }

    pub fn report(&self, r: GatewayReport) {
        let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        if reports.len() >= self.max_gateways && !reports.contains_key(&r.id) {
            let cutoff = r.at_ms.saturating_sub(self.stale_after_ms);
            reports.retain(|_, (old, _)| old.at_ms >= cutoff);
            if reports.len() >= self.max_gateways {
                return; // full of live gateways: refuse the newcomer rather than grow
            }
        }
        // The report counts the clients sent there since the last one (those that came).
        reports.insert(r.id, (r, 0));
    }

    /// Ranked endpoints for a client in `region`/`zone` (either may be empty). The load
    /// of a gateway is its last report plus the clients sent its way since: in a reconnect
    /// storm thousands ask within one report interval, and ranking by the report alone
    /// would send them all to the same gateway.
    pub fn rank(&self, region: &str, zone: &str, now_ms: u64) -> Vec<GatewayEndpoint> {
        let mut reports = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        let mut live: Vec<(&GatewayReport, &mut u64)> = reports
            .values_mut()
            .filter(|(r, _)| now_ms.saturating_sub(r.at_ms) <= self.stale_after_ms)
            .map(|(r, handed)| (&*r, handed))
            .collect();
        let distance = |r: &GatewayReport| match (r.region == region, r.zone == zone) {
            (true, true) => 0,
            (true, false) => 1,
            _ => 2,
        };
        live.sort_by_key(|(r, handed)| (distance(r), r.connections + **handed, r.id));
        if let Some((_, handed)) = live.first_mut() {
            **handed += 1;
        }
        let mut out = Vec::new();
        for (r, _) in live {
            let ep = |transport: &str, address: &String| GatewayEndpoint {
                transport: transport.into(),
                address: address.clone(),
                region: r.region.clone(),
                zone: r.zone.clone(),
                connections: r.connections,
            };
            if let Some(a) = &r.ws_url {
                out.push(ep("ws", a));
            }
            if let Some(a) = &r.tcp_addr {
                out.push(ep("tcp", a));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(id: u16, zone: &str, conns: u64, at: u64) -> GatewayReport {
        GatewayReport {
            id: GatewayId(id),
            region: "eu".into(),
            zone: zone.into(),
            ws_url: None,
            tcp_addr: Some(format!("10.0.0.{id}:1")),
            connections: conns,
            at_ms: at,
        }
    }

    #[test]
    fn nearest_then_least_loaded_and_stale_ones_drop_out() {
        let route = Route::new(1_000);
        route.report(rep(1, "a", 500, 10_000));
        route.report(rep(2, "a", 100, 10_000));
        route.report(rep(3, "b", 0, 10_000));
        route.report(rep(4, "a", 0, 5_000)); // stale at 10,500
        let order: Vec<_> = route
            .rank("eu", "a", 10_500)
            .into_iter()
            .map(|e| e.address)
            .collect();
        assert_eq!(order, vec!["10.0.0.2:1", "10.0.0.1:1", "10.0.0.3:1"]);
    }

    #[test]
    fn a_crowd_asking_between_reports_is_spread() {
        let route = Route::new(1_000);
        route.report(rep(1, "a", 100, 10_000));
        route.report(rep(2, "a", 0, 10_000));
        let mut first = HashMap::new();
        for _ in 0..300 {
            let top = route.rank("eu", "a", 10_100).remove(0).address;
            *first.entry(top).or_insert(0) += 1;
        }
        // The first 100 go to the empty one; after that they take turns.
        assert_eq!(first["10.0.0.2:1"], 200);
        assert_eq!(first["10.0.0.1:1"], 100);
        // A fresh report replaces the guess.
        route.report(rep(2, "a", 0, 10_200));
        assert_eq!(route.rank("eu", "a", 10_300)[0].address, "10.0.0.2:1");
    }
}
