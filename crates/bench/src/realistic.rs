//! `realistic`: traffic shaped like an IM service's rather than the micro-benchmark's.
//!
//! - Every user has a contact list of 20–200 others, its length drawn from a power law
//!   (Pareto, α = 2.5, from 20): most lists short, a few long.
//! - Users send at rates drawn from a power law too (Pareto, α = 1.5, capped at 100× the
//!   lightest): a few heavy senders, many light ones. Arrivals are a Poisson process
//!   of the offered rate, each given to a sender by weight.
//! - A sender writes to a contact chosen Zipf-like (the k-th contact with weight 1/k), to
//!   a stranger (a new conversation) with a small probability; a share of the traffic
//!   goes to groups instead (a group, then one of its members as the sender), whose sizes
//!   (3–500) follow a power law (α = 1.8).
//! - Receivers mark a share of what they get read (READ moves their cursor); a share of
//!   users have a second device that goes offline for a few seconds at a time, comes
//!   back and pulls what it missed.
//! - The first `warmup_secs` are reported apart from the steady state after them.
//!
//! The senders, receivers and checks are traffic.rs's: every message is checked to arrive
//! exactly once and in order per sender and conversation, and the receivers count what
//! they applied from a signal and what they had to pull.

use crate::BenchError;
use crate::report::BenchResult;
use crate::server::Server;
use crate::setup::{self, BenchUser};
use crate::traffic::{self, Arrival, Extras, Load, Plan, Target};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use xinge_client::api::{SyncRequest, SyncResponse};
use xinge_client::{Connection, Transport};
use xinge_core::ConvId;
use xinge_proto::cmd;

/// The shape of a realistic run.
#[derive(Clone, Debug)]
pub struct Shape {
    pub users: usize,
    pub groups: usize,
    /// Share of messages sent to a group.
    pub group_share: f64,
    /// Share of 1:1 messages to someone not in the sender's contacts.
    pub new_share: f64,
    /// Share of delivered messages the receiver marks read.
    pub read_share: f64,
    /// Users with a second device that goes offline and comes back.
    pub reconnecting: usize,
    pub warmup_secs: u64,
    pub seed: u64,
}

/// splitmix64: a small, seedable generator (the run is the same for the same seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Pareto with minimum `min` and shape `alpha`, capped at `max`.
    fn pareto(&mut self, min: f64, alpha: f64, max: f64) -> f64 {
        (min / self.unit().powf(1.0 / alpha)).min(max)
    }
}

/// Who talks to whom, and how much.
struct Population {
    contacts: Vec<Vec<usize>>,
    /// Cumulative send weights, for choosing a sender.
    cumulative: Vec<f64>,
    /// The groups and their members.
    groups: Vec<(ConvId, Vec<usize>)>,
}

impl Population {
    fn draw(users: usize, rng: &mut Rng) -> Self {
        let contacts = (0..users)
            .map(|me| {
                let want = (rng.pareto(20.0, 2.5, 200.0) as usize).min(users - 1);
                let mut list = Vec::with_capacity(want);
                while list.len() < want {
                    let other = rng.below(users);
                    if other != me && !list.contains(&other) {
                        list.push(other);
                    }
                }
                list
            })
            .collect();
        let mut sum = 0.0;
        let cumulative = (0..users)
            .map(|_| {
                sum += rng.pareto(1.0, 1.5, 100.0);
                sum
            })
            .collect();
        Self {
            contacts,
            cumulative,
            groups: Vec::new(),
        }
    }

    fn sender(&self, rng: &mut Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let x = rng.unit() * total;
        self.cumulative
            .partition_point(|&c| c < x)
            .min(self.cumulative.len() - 1)
    }

    /// The k-th contact with weight 1/(k+1): k = ⌊(d+1)^u⌋ − 1 for uniform u.
    fn contact(&self, me: usize, rng: &mut Rng) -> usize {
        let list = &self.contacts[me];
        let k = ((list.len() as f64 + 1.0).powf(rng.unit()) as usize).saturating_sub(1);
        list[k.min(list.len() - 1)]
    }
}

/// The run's arrivals: a Poisson process of `rate` for `secs`, each to a target.
fn schedule(
    pop: &Population,
    users: &[BenchUser],
    shape: &Shape,
    load: Load,
    rng: &mut Rng,
) -> Vec<Arrival> {
    let end_us = load.secs as f64 * 1e6;
    let mean_gap_us = 1e6 / load.rate.max(1) as f64;
    let mut out = Vec::with_capacity((load.rate * load.secs) as usize + 1);
    let mut t = 0.0;
    loop {
        t += -rng.unit().ln() * mean_gap_us;
        if t >= end_us {
            return out;
        }
        // A group message: a group, then one of its members; a 1:1 one: a sender by
        // weight, then whom to.
        if !pop.groups.is_empty() && rng.unit() <= shape.group_share {
            let (conv, members) = &pop.groups[rng.below(pop.groups.len())];
            out.push(Arrival {
                at_us: t as u64,
                sender: members[rng.below(members.len())],
                target: Target::Conv(*conv),
            });
            continue;
        }
        let me = pop.sender(rng);
        let target = if rng.unit() <= shape.new_share {
            let mut other = rng.below(users.len());
            if other == me {
                other = (other + 1) % users.len();
            }
            Target::To(users[other].id)
        } else {
            Target::To(users[pop.contact(me, rng)].id)
        };
        out.push(Arrival {
            at_us: t as u64,
            sender: me,
            target,
        });
    }
}

/// The users and groups of a kept store (`--data-dir`), so that later runs on it find
/// them again: their names' run id, how many, the seed their contacts were drawn with,
/// and each group with its members.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    run: String,
    users: usize,
    seed: u64,
    groups: Vec<(ConvId, Vec<usize>)>,
}

const SAVED: &str = "population.json";

pub async fn run(
    srv: &Server,
    transport: Transport,
    shape: Shape,
    load: Load,
    kept: Option<&std::path::Path>,
) -> Result<BenchResult, BenchError> {
    let n = shape.users.max(21);
    let mut rng = Rng(shape.seed);
    let saved: Option<Saved> = kept
        .and_then(|d| std::fs::read(d.join(SAVED)).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|s: &Saved| s.users == n && s.seed == shape.seed);
    let mut pop = Population::draw(n, &mut rng);
    let mut fanout = HashMap::new();
    let mut sizes = Vec::new();
    let (run_id, users) = match saved {
        Some(s) => {
            eprintln!(
                "realistic: logging in the {n} users and {} groups kept in the data directory",
                s.groups.len()
            );
            let users = setup::log_in(&srv.base, &s.run, n).await?;
            for (conv, members) in s.groups {
                fanout.insert(conv, members.len() as u64 - 1);
                sizes.push(members.len());
                pop.groups.push((conv, members));
            }
            (s.run, users)
        }
        None => {
            eprintln!("realistic: creating {n} users");
            let (run_id, users) = setup::users(&srv.base, n).await?;
            eprintln!("realistic: creating {} groups of 3–500", shape.groups);
            make_groups(
                &users,
                shape.groups,
                &mut rng,
                &mut pop,
                &mut fanout,
                &mut sizes,
            )
            .await?;
            if let Some(d) = kept {
                let s = Saved {
                    run: run_id.clone(),
                    users: n,
                    seed: shape.seed,
                    groups: pop.groups.clone(),
                };
                let json = serde_json::to_vec(&s).map_err(std::io::Error::other)?;
                std::fs::write(d.join(SAVED), json)?;
            }
            (run_id, users)
        }
    };
    let built = Built {
        users,
        run_id,
        pop,
        fanout,
        sizes,
    };
    run_on(srv, transport, shape, load, built).await
}

/// Creates `count` groups of 3–500 (power law) among `users`.
async fn make_groups(
    users: &[BenchUser],
    count: usize,
    rng: &mut Rng,
    pop: &mut Population,
    fanout: &mut HashMap<ConvId, u64>,
    sizes: &mut Vec<usize>,
) -> Result<(), BenchError> {
    let n = users.len();
    for _ in 0..count {
        let size = (rng.pareto(3.0, 1.8, 500.0) as usize).min(n);
        let mut members: Vec<usize> = Vec::with_capacity(size);
        while members.len() < size {
            let u = rng.below(n);
            if !members.contains(&u) {
                members.push(u);
            }
        }
        let others: Vec<BenchUser> = members[1..]
            .iter()
            .map(|&i| BenchUser {
                id: users[i].id,
                http: users[i].http.clone(),
            })
            .collect();
        let conv = setup::group(&users[members[0]], &others).await?;
        fanout.insert(conv, size as u64 - 1);
        sizes.push(size);
        pop.groups.push((conv, members));
    }
    Ok(())
}

/// The users and groups a run is on, made or found again.
struct Built {
    users: Vec<BenchUser>,
    /// The run id in the users' names.
    run_id: String,
    pop: Population,
    fanout: HashMap<ConvId, u64>,
    sizes: Vec<usize>,
}

async fn run_on(
    srv: &Server,
    transport: Transport,
    shape: Shape,
    load: Load,
    built: Built,
) -> Result<BenchResult, BenchError> {
    let Built {
        users,
        run_id,
        pop,
        fanout,
        sizes,
    } = built;
    let n = users.len();
    // The same arrivals for the same seed (runs compared are offered the same traffic).
    let mut rng = Rng(shape.seed ^ 0x00A1_1CE5);
    let arrivals = schedule(&pop, &users, &shape, load, &mut rng);
    let group_msgs = arrivals
        .iter()
        .filter(|a| matches!(a.target, Target::Conv(_)))
        .count();
    eprintln!(
        "realistic: {} messages, {group_msgs} of them to groups",
        arrivals.len()
    );
    let contacts: Vec<usize> = pop.contacts.iter().map(Vec::len).collect();
    let plan = Plan {
        scenario: "realistic".into(),
        online: (0..n).collect(),
        // Every user sends; where to is the schedule's.
        senders: (0..n).map(|i| (i, Target::To(users[i].id))).collect(),
        fanout: 1,
        follow: None,
        start_at_ms: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let churn = Arc::new(Churn::default());
    let mut second = tokio::task::JoinSet::new();
    let address = match transport {
        Transport::Tcp => srv.tcp.clone(),
        Transport::Ws => srv.ws.clone(),
    };
    // One client (one connection pool) for every second device's login.
    let plain = xinge_client::Http::new(&srv.base);
    for i in 0..shape.reconnecting.min(n) {
        let http = setup::login_device(&plain, &run_id, i, "tablet").await?;
        let token = http.token().unwrap_or_default().to_owned();
        let seed = shape.seed ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
        second.spawn(offline_and_back(
            transport,
            address.clone(),
            token,
            seed,
            churn.clone(),
            stop_rx.clone(),
        ));
    }
    let extras = Extras {
        schedule: Some(arrivals),
        fanout,
        warmup_secs: shape.warmup_secs,
        read_share: shape.read_share,
    };
    // Every run's messages their own client_msg_ids, though its users may be an earlier
    // run's (a kept store).
    let stamp = format!("{run_id}{}", setup::run_stamp());
    let result = traffic::run_with(srv, transport, &users, plan, &stamp, load, extras).await;
    let _ = stop_tx.send(true);
    while second.join_next().await.is_some() {}
    let mut r = result?;
    r.param("users", n as u64);
    r.param("groups", shape.groups as u64);
    r.param(
        "group_share_pct",
        (shape.group_share * 100.0).round() as u64,
    );
    r.param("new_conv_pct", (shape.new_share * 100.0).round() as u64);
    r.param("read_pct", (shape.read_share * 100.0).round() as u64);
    r.param("reconnecting", shape.reconnecting.min(n) as u64);
    r.param("seed", shape.seed);
    let mean = |v: &[usize]| v.iter().sum::<usize>() as f64 / v.len().max(1) as f64;
    eprintln!(
        "realistic: contacts per user mean {:.0} (max {}); group sizes mean {:.0} (max {}); \
         second devices went offline {} times and pulled {} entries on their return",
        mean(&contacts),
        contacts.iter().max().unwrap_or(&0),
        mean(&sizes),
        sizes.iter().max().unwrap_or(&0),
        churn.returns.load(Ordering::Relaxed),
        churn.pulled.load(Ordering::Relaxed),
    );
    Ok(r)
}

#[derive(Default)]
struct Churn {
    returns: AtomicU64,
    pulled: AtomicU64,
}

/// A second device: online for 5–20 s (taking the signals), offline for 1–5 s, back,
/// then pulls everything since the last entry it had; until the run stops.
async fn offline_and_back(
    transport: Transport,
    address: String,
    token: String,
    seed: u64,
    churn: Arc<Churn>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut rng = Rng(seed);
    let mut cursor = 0u64;
    let mut first = true;
    while !*stop.borrow() {
        let Ok((conn, mut signals)) = Connection::connect(transport, &address, &token).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        // Back: everything since the last entry (on the first connection, only the head).
        loop {
            let req = SyncRequest {
                after: cursor,
                limit: Some(500),
                groups: false,
            };
            let Ok(resp) = conn.request::<_, SyncResponse>(cmd::SYNC, &req).await else {
                break;
            };
            if !first {
                churn
                    .pulled
                    .fetch_add(resp.entries.len() as u64, Ordering::Relaxed);
            }
            cursor = resp.entries.last().map_or(cursor, |e| e.seq.max(cursor));
            if !resp.has_more {
                break;
            }
        }
        if !first {
            churn.returns.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let online = Duration::from_millis(5_000 + rng.below(15_000) as u64);
        let until = tokio::time::Instant::now() + online;
        loop {
            tokio::select! {
                s = signals.recv() => match s {
                    Some(xinge_client::api::Signal::Inbox { seq, .. }) => cursor = cursor.max(seq),
                    Some(_) => {}
                    None => break,
                },
                _ = tokio::time::sleep_until(until) => break,
                _ = stop.changed() => return,
            }
        }
        drop(conn);
        let offline = Duration::from_millis(1_000 + rng.below(4_000) as u64);
        tokio::select! {
            _ = tokio::time::sleep(offline) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_lists_and_send_weights_are_heavy_tailed_and_zipf_favours_the_first() {
        let mut rng = Rng(7);
        let pop = Population::draw(2_000, &mut rng);
        let lens: Vec<usize> = pop.contacts.iter().map(Vec::len).collect();
        assert!(lens.iter().all(|&l| (20..=200).contains(&l)));
        let short = lens.iter().filter(|&&l| l < 40).count();
        assert!(short > 1_000, "most lists are short: {short}");
        assert!(lens.iter().any(|&l| l >= 150), "a few are long");
        // The heaviest 5 % of senders send a large share.
        let total = *pop.cumulative.last().unwrap();
        let mut w: Vec<f64> = pop
            .cumulative
            .windows(2)
            .map(|p| p[1] - p[0])
            .chain([pop.cumulative[0]])
            .collect();
        w.sort_by(|a, b| b.total_cmp(a));
        let top: f64 = w[..100].iter().sum();
        assert!(top / total > 0.3, "{}", top / total);
        // Zipf over a contact list: the first contact far more often than the tenth.
        let mut hits = [0u32; 20];
        for _ in 0..20_000 {
            let c = pop.contact(0, &mut rng);
            if let Some(k) = pop.contacts[0].iter().position(|&x| x == c)
                && k < 20
            {
                hits[k] += 1;
            }
        }
        assert!(hits[0] > 3 * hits[9], "{hits:?}");
    }

    #[test]
    fn arrivals_are_poisson_at_the_offered_rate() {
        let mut rng = Rng(3);
        let mut pop = Population::draw(100, &mut rng);
        let group = ConvId::Group(xinge_core::GroupId(9));
        pop.groups.push((group, vec![4, 5, 6]));
        let users: Vec<BenchUser> = (0..100)
            .map(|i| BenchUser {
                id: xinge_core::UserId(i + 1),
                http: xinge_client::Http::new("http://127.0.0.1:1"),
            })
            .collect();
        let shape = Shape {
            users: 100,
            groups: 1,
            group_share: 0.1,
            new_share: 0.02,
            read_share: 0.0,
            reconnecting: 0,
            warmup_secs: 0,
            seed: 3,
        };
        let load = Load {
            rate: 1_000,
            secs: 20,
            size: 0,
        };
        let a = schedule(&pop, &users, &shape, load, &mut rng);
        assert!((19_000..21_000).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).all(|w| w[0].at_us <= w[1].at_us));
        // Exponential gaps: about e^-1 of them longer than the mean.
        let long = a
            .windows(2)
            .filter(|w| w[1].at_us - w[0].at_us > 1_000)
            .count();
        let share = long as f64 / a.len() as f64;
        assert!((0.33..0.41).contains(&share), "{share}");
        // A sender never writes to itself; a group's messages come from its members.
        assert!(a.iter().all(|x| x.target != Target::To(users[x.sender].id)));
        let to_group: Vec<_> = a
            .iter()
            .filter(|x| x.target == Target::Conv(group))
            .collect();
        let share = to_group.len() as f64 / a.len() as f64;
        assert!((0.09..0.11).contains(&share), "{share}");
        assert!(to_group.iter().all(|x| (4..=6).contains(&x.sender)));
    }
}
