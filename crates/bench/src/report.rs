//! A run's result: one struct, written as JSON, shown as a markdown table, and plotted.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use xinge_client::Transport;

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Checks {
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Pulls the receivers made (signals with a gap, or too large to ride inline).
    pub pulls: u64,
    /// Pull requests that failed (a timeout or an error answer under overload) and were
    /// made again from the receiver's cursor.
    #[serde(default)]
    pub failed_pulls: u64,
    /// Times a receiver's connection was closed by the server and connected again (each
    /// then catches up by pull, as a real client does).
    #[serde(default)]
    pub reconnects: u64,
    /// Repair pulls the receivers made while the run drained (once a second each).
    #[serde(default)]
    pub repairs: u64,
    /// Messages a connected receiver applied from the signal that announced them, and
    /// those it had to pull (a gap: signals for one inbox arriving out of order, or one
    /// coalesced or dropped). Pulled ones cost a round trip each batch.
    #[serde(default)]
    pub inline: u64,
    #[serde(default)]
    pub pulled: u64,
    /// Signals that arrived after a pull had already brought their entry.
    #[serde(default)]
    pub stale_signals: u64,
}

#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct BenchResult {
    pub scenario: String,
    pub transport: String,
    pub params: BTreeMap<String, u64>,
    pub unix_time: u64,
    // idle
    pub connections: u64,
    pub connect_per_s: f64,
    pub gateway_reported_connections: u64,
    pub server_rss_before: u64,
    pub server_rss_after: u64,
    pub rss_per_connection: f64,
    // traffic
    pub offered: u64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub send_errors: u64,
    pub generator_overflow: u64,
    pub offered_secs: f64,
    pub delivered_per_s: f64,
    pub ack_latency: Percentiles,
    pub delivery_latency: Percentiles,
    /// With a warm-up: the deliveries of the messages sent during it (`delivery_latency`
    /// is then the steady state's).
    #[serde(default)]
    pub warmup_latency: Option<Percentiles>,
    /// READ requests the receivers made.
    #[serde(default)]
    pub reads: u64,
    pub checks: Checks,
    pub server_cpu_us: u64,
    pub server_cpu_us_per_msg: f64,
    /// large-group: time of one "who read" query over the whole membership.
    pub read_state: Option<Percentiles>,
    /// mixed: the 1:1 send→delivered latency with no large group running.
    pub direct_alone_latency: Option<Percentiles>,
    /// mixed: the large group's send→delivered latency.
    pub group_latency: Option<Percentiles>,
    #[serde(skip)]
    pub delivery_hist: Option<Histogram<u64>>,
    #[serde(skip)]
    pub ack_hist: Option<Histogram<u64>>,
    /// Worker mode: the histograms, HDR V2-serialised and base64-encoded, for merging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_hist_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_hist_b64: Option<String>,
    /// The server's CPU time (µs) when sending started and when deliveries were drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_window_us: Option<(u64, u64)>,
    /// The embedded store's durable writes over the same window, and how many of them took
    /// over 100 ms (the disk's stalls, which every commit of the batch waits out). None
    /// where the server has no embedded store or did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable_writes: Option<DurableWrites>,
    /// How long the server itself took to answer the run's sends (from reading the request
    /// to its answer being ready: `xinge_command_seconds{cmd="send"}`), apart from the
    /// time they spent in sockets, run queues and the load generator. None where the
    /// server did not answer or has no such metric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_send: Option<Handling>,
}

/// A server-side latency histogram as the server exports it: cumulative counts by upper
/// bound (seconds), so a quantile is known to within its bucket.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Handling {
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
}

impl Handling {
    /// `xinge_command_seconds{cmd="<cmd>"}` from the server's metrics (Prometheus text).
    pub fn parse(metrics: &str, cmd: &str) -> Option<Self> {
        let bucket = format!("xinge_command_seconds_bucket{{cmd=\"{cmd}\",le=\"");
        let count = format!("xinge_command_seconds_count{{cmd=\"{cmd}\"}} ");
        let mut h = Self::default();
        for l in metrics.lines() {
            if let Some(rest) = l.strip_prefix(&bucket) {
                let (le, n) = rest.split_once("\"} ")?;
                // The +Inf bucket is the count (and JSON has no infinity).
                if le != "+Inf" {
                    h.buckets.push((le.parse().ok()?, n.trim().parse().ok()?));
                }
            } else if let Some(n) = l.strip_prefix(&count) {
                h.count = n.trim().parse().ok()?;
            }
        }
        (!h.buckets.is_empty()).then_some(h)
    }

    /// What was recorded between two readings of the same server.
    pub fn since(&self, before: &Self) -> Self {
        let earlier = |le: f64| {
            before
                .buckets
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0, |(_, n)| *n)
        };
        Self {
            count: self.count.saturating_sub(before.count),
            buckets: self
                .buckets
                .iter()
                .map(|&(le, n)| (le, n.saturating_sub(earlier(le))))
                .collect(),
        }
    }

    /// The upper bound (ms) of the bucket holding quantile `q` (infinite past the last
    /// bucket); None with nothing recorded.
    pub fn bound_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let want = (q * self.count as f64).ceil() as u64;
        Some(
            self.buckets
                .iter()
                .find(|(_, n)| *n >= want)
                .map_or(f64::INFINITY, |(le, _)| le * 1000.0),
        )
    }
}

#[derive(
    Clone, Copy, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq, PartialOrd, Ord,
)]
pub struct DurableWrites {
    pub all: u64,
    pub over_100ms: u64,
    /// The store's compactions completed, and the time they took, in ms (fjall: the
    /// embedded store's background work, which durable writes may wait behind).
    #[serde(default)]
    pub compactions: u64,
    #[serde(default)]
    pub compaction_ms: u64,
}

impl DurableWrites {
    /// Read from the server's metrics (Prometheus text): the count of its
    /// `xinge_store_write_seconds` histogram, and `xinge_store_slow_writes_total`, which
    /// the store counts with the same threshold as its `slow durable write` log line (and
    /// which is absent until the first one); and the compaction counters, absent until
    /// the store's first batch.
    pub fn parse(metrics: &str) -> Option<Self> {
        let value = |name: &str| {
            metrics.lines().find_map(|l| {
                let v = l.strip_prefix(name)?.strip_prefix(' ')?;
                v.trim().parse::<u64>().ok()
            })
        };
        Some(Self {
            all: value("xinge_store_write_seconds_count")?,
            over_100ms: value("xinge_store_slow_writes_total").unwrap_or(0),
            compactions: value("xinge_store_compactions_total").unwrap_or(0),
            compaction_ms: value("xinge_store_compaction_ms_total").unwrap_or(0),
        })
    }

    /// What happened between two readings of the same server.
    pub fn since(self, before: Self) -> Self {
        Self {
            all: self.all.saturating_sub(before.all),
            over_100ms: self.over_100ms.saturating_sub(before.over_100ms),
            compactions: self.compactions.saturating_sub(before.compactions),
            compaction_ms: self.compaction_ms.saturating_sub(before.compaction_ms),
        }
    }
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

impl BenchResult {
    pub fn new(scenario: &str, transport: Transport) -> Self {
        Self {
            scenario: scenario.into(),
            transport: match transport {
                Transport::Tcp => "tcp",
                Transport::Ws => "ws",
            }
            .into(),
            unix_time: xinge_core::now_ms() / 1000,
            ..Self::default()
        }
    }

    pub fn param(&mut self, k: &str, v: u64) {
        self.params.insert(k.into(), v);
    }

    /// Why the run does not count, if it does not.
    pub fn failure(&self) -> Option<String> {
        let c = &self.checks;
        if c.lost + c.duplicated + c.out_of_order > 0 {
            return Some(format!(
                "lost {}, duplicated {}, out of order {}",
                c.lost, c.duplicated, c.out_of_order
            ));
        }
        if self.send_errors > 0 {
            return Some(format!("{} sends failed", self.send_errors));
        }
        if self.scenario == "idle"
            && self.connections < self.params.get("connections").copied().unwrap_or(0)
        {
            return Some("not every connection was established".into());
        }
        None
    }

    pub fn markdown(&self) -> String {
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut s = format!(
            "### {} ({}, {})\n\n| metric | value |\n|---|---|\n",
            self.scenario,
            self.transport,
            params.join(" ")
        );
        let mut row = |k: &str, v: String| s.push_str(&format!("| {k} | {v} |\n"));
        if self.scenario == "idle" {
            row("connections held", self.connections.to_string());
            row("connects/s", format!("{:.0}", self.connect_per_s));
            row(
                "server RSS before → after",
                format!(
                    "{:.1} MiB → {:.1} MiB",
                    self.server_rss_before as f64 / 1048576.0,
                    self.server_rss_after as f64 / 1048576.0
                ),
            );
            row(
                "**server RSS per connection**",
                format!("**{:.0} bytes**", self.rss_per_connection),
            );
        } else {
            row(
                "offered / sent / acked / delivered",
                format!(
                    "{} / {} / {} / {}",
                    self.offered, self.sent, self.acked, self.delivered
                ),
            );
            row("delivered/s", format!("{:.0}", self.delivered_per_s));
            let d = &self.delivery_latency;
            row(
                "send→delivered p50 / p90 / p99 / p99.9 / max (ms)",
                format!(
                    "{} / {} / {} / {} / {}",
                    ms(d.p50_us),
                    ms(d.p90_us),
                    ms(d.p99_us),
                    ms(d.p999_us),
                    ms(d.max_us)
                ),
            );
            if let Some(w) = &self.warmup_latency {
                row(
                    "warm-up (apart from the above): send→delivered p50 / p99 / max (ms)",
                    format!("{} / {} / {}", ms(w.p50_us), ms(w.p99_us), ms(w.max_us)),
                );
            }
            let a = &self.ack_latency;
            row(
                "send→ack p50 / p99 / max (ms)",
                format!("{} / {} / {}", ms(a.p50_us), ms(a.p99_us), ms(a.max_us)),
            );
            row(
                "lost / duplicated / out of order",
                format!(
                    "{} / {} / {}",
                    self.checks.lost, self.checks.duplicated, self.checks.out_of_order
                ),
            );
            row(
                "send errors / generator overflow / pulls (failed, tried again) / reconnects / repair pulls while draining",
                format!(
                    "{} / {} / {} ({}) / {} / {}",
                    self.send_errors,
                    self.generator_overflow,
                    self.checks.pulls,
                    self.checks.failed_pulls,
                    self.checks.reconnects,
                    self.checks.repairs
                ),
            );
            let c = &self.checks;
            if c.inline + c.pulled > 0 {
                row(
                    "delivered inline / by pull / signals after their pull / READs",
                    format!(
                        "{} / {} / {} / {}",
                        c.inline, c.pulled, c.stale_signals, self.reads
                    ),
                );
            }
            row(
                "**server CPU per delivered message**",
                format!("**{:.1} µs**", self.server_cpu_us_per_msg),
            );
            row(
                "server RSS at end",
                format!("{:.1} MiB", self.server_rss_after as f64 / 1048576.0),
            );
            if let Some(w) = &self.durable_writes {
                row(
                    "server's durable writes / over 100 ms (the disk)",
                    format!("{} / {}", w.all, w.over_100ms),
                );
                row(
                    "store compactions / time compacting (background)",
                    format!(
                        "{} / {:.1} s",
                        w.compactions,
                        w.compaction_ms as f64 / 1000.0
                    ),
                );
            }
            if let Some(h) = &self.server_send {
                let b = |q| match h.bound_ms(q) {
                    Some(v) if v.is_finite() => format!("≤ {v}"),
                    Some(_) => "over the last bucket".into(),
                    None => "—".into(),
                };
                row(
                    "server's own send handling p50 / p99 (ms, to its bucket)",
                    format!("{} / {}", b(0.5), b(0.99)),
                );
            }
            if let Some(d) = &self.direct_alone_latency {
                row(
                    "1:1 alone: send→delivered p50 / p99 / max (ms)",
                    format!("{} / {} / {}", ms(d.p50_us), ms(d.p99_us), ms(d.max_us)),
                );
            }
            if let Some(g) = &self.group_latency {
                row(
                    "large group alongside: send→delivered p50 / p99 / max (ms)",
                    format!("{} / {} / {}", ms(g.p50_us), ms(g.p99_us), ms(g.max_us)),
                );
            }
            if let Some(rs) = &self.read_state {
                row(
                    "who-read over all members p50 / max (ms)",
                    format!("{} / {}", ms(rs.p50_us), ms(rs.max_us)),
                );
            }
        }
        s
    }
}

/// Writes `<out>/<scenario>-<time>.json` and, for traffic runs, `<scenario>-latency.svg`.
pub fn write(out: &Path, r: &BenchResult) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let json = serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?;
    std::fs::write(
        out.join(format!("{}-{}.json", r.scenario, r.unix_time)),
        json,
    )?;
    if let Some(h) = &r.delivery_hist
        && !h.is_empty()
    {
        plot(&out.join(format!("{}-latency.svg", r.scenario)), r, h)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    Ok(())
}

/// Latency by percentile, on the usual log scale of "nines".
fn plot(
    path: &Path,
    r: &BenchResult,
    h: &Histogram<u64>,
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let nines = [
        0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999,
    ];
    let pts: Vec<(f64, f64)> = nines
        .iter()
        .map(|&q| {
            (
                -(1.0f64 - q).log10(),
                h.value_at_quantile(q) as f64 / 1000.0,
            )
        })
        .collect();
    let ymax = pts.iter().map(|p| p.1).fold(0.1, f64::max) * 1.1;
    let root = SVGBackend::new(path, (720, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "xinge {} send→delivered, {:.0} msgs/s",
        r.scenario, r.delivered_per_s
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..4f64, 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| format!("{}", 100.0 - 100.0 * 10f64.powf(-x)))
        .draw()?;
    chart.draw_series(LineSeries::new(pts.clone(), &BLUE))?;
    chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, BLUE.filled())))?;
    root.present()?;
    Ok(())
}

/// A histogram as HDR V2 bytes in base64, and back.
pub fn hist_to_b64(h: &Histogram<u64>) -> Option<String> {
    use base64::Engine;
    let mut buf = Vec::new();
    use hdrhistogram::serialization::Serializer;
    hdrhistogram::serialization::V2Serializer::new()
        .serialize(h, &mut buf)
        .ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(buf))
}

pub fn hist_from_b64(s: &str) -> Option<Histogram<u64>> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    hdrhistogram::serialization::Deserializer::new()
        .deserialize(&mut &bytes[..])
        .ok()
}

#[cfg(test)]
mod tests {
    use super::{DurableWrites, Handling};

    #[test]
    fn send_handling_is_read_from_the_servers_histogram() {
        let text = |a: u64, b: u64, c: u64| {
            format!(
                "xinge_command_seconds_bucket{{cmd=\"sync\",le=\"0.001\"}} 7\n\
                 xinge_command_seconds_bucket{{cmd=\"send\",le=\"0.001\"}} {a}\n\
                 xinge_command_seconds_bucket{{cmd=\"send\",le=\"0.005\"}} {b}\n\
                 xinge_command_seconds_bucket{{cmd=\"send\",le=\"+Inf\"}} {c}\n\
                 xinge_command_seconds_sum{{cmd=\"send\"}} 0.5\n\
                 xinge_command_seconds_count{{cmd=\"send\"}} {c}\n"
            )
        };
        let before = Handling::parse(&text(10, 10, 10), "send").unwrap();
        let after = Handling::parse(&text(60, 108, 110), "send").unwrap();
        let run = after.since(&before);
        assert_eq!(run.count, 100);
        assert_eq!(run.bound_ms(0.5), Some(1.0));
        assert_eq!(run.bound_ms(0.98), Some(5.0));
        assert_eq!(run.bound_ms(0.99), Some(f64::INFINITY));
        // Workers hand their results to the coordinator as JSON.
        let json = serde_json::to_string(&run).unwrap();
        assert_eq!(serde_json::from_str::<Handling>(&json).unwrap(), run);
        assert_eq!(Handling::default().bound_ms(0.5), None);
        assert_eq!(Handling::parse("xinge_connections 3\n", "send"), None);
    }

    #[test]
    fn durable_writes_are_read_from_the_servers_metrics() {
        let before = "# TYPE xinge_store_write_seconds histogram\n\
            xinge_store_write_seconds_bucket{le=\"0.1\"} 98\n\
            xinge_store_write_seconds_bucket{le=\"+Inf\"} 100\n\
            xinge_store_write_seconds_sum 1.5\n\
            xinge_store_write_seconds_count 100\n\
            xinge_store_slow_writes_total 2\n\
            xinge_store_compactions_total 40\n\
            xinge_store_compaction_ms_total 1200\n";
        let after = before
            .replace("_count 100", "_count 1103")
            .replace("_total 2", "_total 5")
            .replace("_total 40", "_total 46")
            .replace("_total 1200", "_total 4700");
        let a = DurableWrites::parse(before).unwrap();
        assert_eq!(
            a,
            DurableWrites {
                all: 100,
                over_100ms: 2,
                compactions: 40,
                compaction_ms: 1200,
            }
        );
        let b = DurableWrites::parse(&after).unwrap();
        assert_eq!(
            b.since(a),
            DurableWrites {
                all: 1003,
                over_100ms: 3,
                compactions: 6,
                compaction_ms: 3500,
            }
        );
        // No slow write yet: the counter is not rendered.
        let none_slow = "xinge_store_write_seconds_count 7\n";
        assert_eq!(
            DurableWrites::parse(none_slow),
            Some(DurableWrites {
                all: 7,
                ..DurableWrites::default()
            })
        );
        // A server without an embedded store has no such metric.
        assert_eq!(DurableWrites::parse("xinge_connections 3\n"), None);
    }
}
