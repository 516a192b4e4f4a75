//! `xinge bench`: load generator. It starts (or attaches to) a server, creates users over
//! the HTTP API, drives them over real long connections through the client SDK, and
//! reports latency percentiles, throughput, lost/duplicated/out-of-order counts and the
//! server's CPU and memory as sampled from /proc.
//!
//! ```text
//! lib.rs     arguments and the scenario switch
//! server.rs  spawning the server under test (optionally pinned) and sampling /proc
//! setup.rs   users, tokens, friendships
//! idle.rs    N authenticated connections held: server memory per connection
//! traffic.rs direct (1:1 pairs), group (write fan-out), large-group (read fan-out)
//! realistic.rs  many users with power-law contacts, rates and groups, Poisson arrivals
//! flood.rs   1:1 traffic alone and while users and one address flood the server
//! report.rs  the result: markdown table, JSON file, SVG latency plot
//! ```

mod flood;
mod hook;
mod idle;
mod media;
mod notify;
mod realistic;
mod report;
mod server;
mod setup;
mod traffic;
mod workers;

use traffic::Load;

pub use report::BenchResult;

use std::path::PathBuf;

#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Base URL of a running server (e.g. http://127.0.0.1:8080); without it the bench
    /// starts its own `xinge serve` on a temporary data directory.
    #[arg(long, global = true)]
    pub server: Option<String>,
    /// Process id of the server given with --server, to sample its CPU and memory.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// With --server on a cluster: the route service's base URL, where the bench asks for
    /// gateways (the api processes do not answer `/v1/route`). Default: --server.
    #[arg(long, global = true)]
    pub route: Option<String>,
    /// CPUs to pin a spawned server to (taskset list, e.g. "0"). Pin the bench itself with
    /// `taskset -c 1 xinge bench …`.
    #[arg(long, global = true)]
    pub server_cpus: Option<String>,
    /// Where the JSON result and the SVG plot go.
    #[arg(long, global = true, default_value = "bench-results")]
    pub out: PathBuf,
    /// `tcp` or `ws`.
    #[arg(long, global = true, default_value = "tcp")]
    pub transport: String,
    /// Load-generator processes for direct, group and large-group: the users are split
    /// among them (each holds its own connections, so the bench is not bound by one
    /// process's file limit) and their results merged.
    #[arg(long, global = true, default_value_t = 1)]
    pub workers: usize,
    /// The spawned server asks a before-send webhook for every send: a receiver in this
    /// process (on the bench's core) that answers `allow`, over loopback HTTP.
    #[arg(long, global = true)]
    pub before_hook: bool,
    /// The spawned server tells an after-events webhook of every message: a receiver in
    /// this process that takes every batch; the events it got are printed at the end.
    #[arg(long, global = true)]
    pub after_hook: bool,
    /// Keep the spawned server's config and data in this directory between runs instead of
    /// a temporary one. `populate` fills it; `realistic` on it finds the same users and
    /// groups again (`population.json`) and runs on the warm store.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(clap::Subcommand, Clone, Debug)]
pub enum Scenario {
    /// Hold N authenticated idle connections; report server memory per connection.
    Idle {
        #[arg(long, default_value_t = 1_000)]
        connections: usize,
        /// Seconds to hold the connections before measuring.
        #[arg(long, default_value_t = 5)]
        hold_secs: u64,
    },
    /// Traffic shaped like a service's — the scenario performance claims quote first:
    /// many users with power-law contact lists, Zipf-like choice of whom to write, a few
    /// heavy senders and many light ones with Poisson arrivals, a share of group traffic in
    /// groups of 3–500, some new conversations, receivers that mark messages read, second
    /// devices that go offline and come back; the warm-up reported apart.
    Realistic {
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        /// Offered messages per second (all senders together, Poisson).
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        /// Seconds of traffic, warm-up included.
        #[arg(long, default_value_t = 70)]
        duration_secs: u64,
        /// Seconds at the start measured apart from the steady state.
        #[arg(long, default_value_t = 10)]
        warmup_secs: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 200)]
        groups: usize,
        /// Percent of messages sent to groups.
        #[arg(long, default_value_t = 10)]
        group_pct: u32,
        /// Percent of 1:1 messages to someone outside the sender's contacts.
        #[arg(long, default_value_t = 2)]
        new_conv_pct: u32,
        /// Percent of delivered messages marked read.
        #[arg(long, default_value_t = 30)]
        read_pct: u32,
        /// Users with a second device that goes offline and comes back.
        #[arg(long, default_value_t = 500)]
        reconnecting: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Fills `--data-dir` with a realistic run's users, groups and messages (no reads, no
    /// second devices), at a rate the server sustains, for `realistic --data-dir` runs on a
    /// warm store. Run again to add more.
    Populate {
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        #[arg(long, default_value_t = 6_000)]
        rate: u64,
        #[arg(long, default_value_t = 200)]
        groups: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// 1:1 messages between pairs of online users at an offered rate: the micro-benchmark
    /// (one sender per inbox, fixed pairs, a fresh store), not what a service sees.
    Direct {
        #[arg(long, default_value_t = 1_000)]
        users: usize,
        /// Offered messages per second (all senders together).
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        /// Content bytes per message (besides the timing fields).
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// 1:1 messages, each pair one sender and one recipient, where `away_pct` of the
    /// recipients are away (logged in, registered for APNs, not connected): their messages
    /// go through the offline-push pipeline to a local APNs stand-in (HTTP/2, TLS) in this
    /// process. `--away-pct 0` is the same run with nobody away, to compare with.
    Notify {
        #[arg(long, default_value_t = 1_000)]
        users: usize,
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 50)]
        away_pct: u32,
        /// The server's collapse window (0: every message its own notification).
        #[arg(long, default_value_t = 1_000)]
        collapse_ms: u64,
        /// Instead of pairs: one group of this many members, all away but its one sender,
        /// `away_pct` of them registered for push, so that each message is a notification
        /// to each of those (the pipeline's throughput; `--away-pct 0` is the same run
        /// with nobody to notify, what the sends alone cost).
        #[arg(long, default_value_t = 0)]
        group: usize,
    },
    /// What media costs: uploads (MB/s, server CPU per MB), downloads through signed URLs,
    /// thumbnails of 12-megapixel photos, and 1:1 text latency alone and with 10 MB uploads
    /// running alongside.
    Media(media::Params),
    /// G groups of S members, all online, every member sending (write fan-out).
    Group {
        #[arg(long, default_value_t = 10)]
        groups: usize,
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Offered sends per second (all groups together).
        #[arg(long, default_value_t = 600)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// One group past the fan-out threshold (read fan-out), a share of it online; the owner
    /// sends. Also times `read-state` (who read) over the whole membership.
    LargeGroup {
        #[arg(long, default_value_t = 10_000)]
        members: usize,
        #[arg(long, default_value_t = 2_000)]
        online: usize,
        #[arg(long, default_value_t = 20)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// 1:1 traffic alone, then alongside abuse — users sending far past their limit and one
    /// address opening connections as fast as it can — on a server with its default
    /// limits. Keep rate/users within the default send limit (20/s per user).
    Flood {
        #[arg(long, default_value_t = 1_000)]
        users: usize,
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Users flooding (each with 32 sends in flight).
        #[arg(long, default_value_t = 4)]
        flooders: usize,
        /// Connection attempts at once from one flooding address (0: none).
        #[arg(long, default_value_t = 32)]
        connection_flood: usize,
        /// ... and at most this many a second.
        #[arg(long, default_value_t = 2_000)]
        connection_rate: u64,
    },
    /// The abusers of a flood run (started by the bench itself).
    #[command(hide = true)]
    FloodWorker {
        #[arg(long)]
        plan_file: PathBuf,
    },
    /// One worker of a multi-process run (started by the bench itself).
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        plan_file: PathBuf,
        #[arg(long)]
        shard: usize,
        #[arg(long)]
        shards: usize,
    },
    /// 1:1 traffic alone, then the same 1:1 traffic alongside a large group's: does the
    /// large group disturb everyone else's latency?
    Mixed {
        /// Users in 1:1 pairs.
        #[arg(long, default_value_t = 1_000)]
        users: usize,
        /// Offered 1:1 messages per second.
        #[arg(long, default_value_t = 5_000)]
        rate: u64,
        #[arg(long, default_value_t = 10_000)]
        members: usize,
        #[arg(long, default_value_t = 2_000)]
        online: usize,
        /// Offered large-group messages per second.
        #[arg(long, default_value_t = 20)]
        group_rate: u64,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("server: {0}")]
    Server(String),
    #[error("setup: {0}")]
    Setup(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the run failed its checks: {0}")]
    Failed(String),
}

/// Runs one scenario and writes its results; an error if the run lost, duplicated or
/// reordered anything.
pub async fn run(args: BenchArgs) -> Result<BenchResult, BenchError> {
    let transport = match args.transport.as_str() {
        "tcp" => xinge_client::Transport::Tcp,
        "ws" => xinge_client::Transport::Ws,
        other => return Err(BenchError::Setup(format!("unknown transport {other}"))),
    };
    if let Scenario::Worker {
        plan_file,
        shard,
        shards,
    } = &args.scenario
    {
        return workers::worker(plan_file, *shard, *shards).await;
    }
    if let Scenario::FloodWorker { plan_file } = &args.scenario {
        return flood::worker(plan_file).await;
    }
    let limits = match args.scenario {
        Scenario::Flood { .. } => server::Limits::Defaults,
        Scenario::Realistic { .. } | Scenario::Populate { .. } => server::Limits::RaisedStrangers,
        _ => server::Limits::Raised,
    };
    // The APNs stand-in's CA and provider key, for the notify scenario's server.
    let keys = tempfile::tempdir()?;
    let mut srv = match &args.server {
        Some(url) => {
            let route = args.route.clone().unwrap_or_else(|| url.clone());
            server::Server::attach(url.clone(), &route, args.server_pid).await?
        }
        None => {
            let mut hooks = String::new();
            if args.before_hook || args.after_hook {
                hooks += hook::SECRETS;
            }
            if args.before_hook {
                hooks += &hook::allow_all().await?;
            }
            if args.after_hook {
                hooks += &hook::take_events().await?;
            }
            if let Scenario::Notify { collapse_ms, .. } = args.scenario {
                hooks += &notify::apns(keys.path(), collapse_ms).await?;
            }
            if let Scenario::Media(p) = &args.scenario {
                hooks += &media::config(p);
            }
            server::Server::spawn_with(
                args.server_cpus.as_deref(),
                limits,
                Some(&hooks),
                args.data_dir.as_deref(),
            )
            .await?
        }
    };
    let result = match args.scenario.clone() {
        Scenario::Idle {
            connections,
            hold_secs,
        } => {
            idle::run(
                &mut srv,
                args.server_cpus.as_deref(),
                transport,
                connections,
                hold_secs,
            )
            .await?
        }
        Scenario::Direct {
            users,
            rate,
            duration_secs,
            size,
        } => {
            let n = users.max(2) & !1;
            eprintln!("direct: creating {n} users in {} pairs", n / 2);
            let (run_id, list) = setup::users(&srv.base, n).await?;
            setup::pair_up(&list).await?;
            let plan = traffic::Plan::direct(&list);
            workers::drive(
                &srv,
                transport,
                &list,
                plan,
                &run_id,
                Load {
                    rate,
                    secs: duration_secs,
                    size,
                },
                args.workers,
            )
            .await?
        }
        Scenario::Notify {
            users,
            rate,
            duration_secs,
            size,
            away_pct,
            collapse_ms,
            group,
        } => {
            if group > 1 {
                let registered = (group - 1) * away_pct.min(100) as usize / 100;
                eprintln!(
                    "notify: creating a group of {group}, all but its sender away, \
                     {registered} of them registered for push"
                );
                let (run_id, list) = setup::users(&srv.base, group).await?;
                let conv = setup::group(&list[0], &list[1..]).await?;
                for (i, u) in list.iter().enumerate().skip(1).take(registered) {
                    u.http
                        .set_push(&notify::registration(i))
                        .await
                        .map_err(|e| BenchError::Setup(format!("push registration: {e}")))?;
                }
                let plan = traffic::Plan {
                    scenario: "notify".into(),
                    online: vec![0],
                    senders: vec![(0, traffic::Target::Conv(conv))],
                    fanout: 0,
                    follow: None,
                    start_at_ms: None,
                };
                let load = Load {
                    rate,
                    secs: duration_secs,
                    size,
                };
                let extras = traffic::Extras::default();
                let mut r =
                    traffic::run_with(&srv, transport, &list, plan, &run_id, load, extras).await?;
                r.param("group", group as u64);
                notify_tail(&srv, &mut r, collapse_ms, away_pct).await;
                r
            } else {
                let n = users.max(2) & !1;
                let away = n / 2 * away_pct.min(100) as usize / 100;
                eprintln!(
                    "notify: creating {n} users in {} pairs, {away} recipients away",
                    n / 2
                );
                let (run_id, list) = setup::users(&srv.base, n).await?;
                setup::pair_up(&list).await?;
                let mut plan = traffic::Plan::direct(&list);
                plan.scenario = "notify".into();
                plan.senders.retain(|(i, _)| i % 2 == 0);
                let mut extras = traffic::Extras::default();
                for k in 0..away {
                    let (a, b) = (2 * k, 2 * k + 1);
                    plan.online.retain(|i| *i != b);
                    // Sent into the conversation, whose deliveries the run expects none of.
                    let conv = xinge_core::ConvId::direct(list[a].id, list[b].id);
                    extras.fanout.insert(conv, 0);
                    if let Some(s) = plan.senders.iter_mut().find(|(i, _)| *i == a) {
                        s.1 = traffic::Target::Conv(conv);
                    }
                    list[b]
                        .http
                        .set_push(&notify::registration(b))
                        .await
                        .map_err(|e| BenchError::Setup(format!("push registration: {e}")))?;
                }
                let load = Load {
                    rate,
                    secs: duration_secs,
                    size,
                };
                let mut r =
                    traffic::run_with(&srv, transport, &list, plan, &run_id, load, extras).await?;
                notify_tail(&srv, &mut r, collapse_ms, away_pct).await;
                r
            }
        }
        Scenario::Media(p) => media::run(&srv, transport, p, args.workers).await?,
        Scenario::Group {
            groups,
            members,
            rate,
            duration_secs,
            size,
        } => {
            let members = members.max(2);
            eprintln!(
                "group: creating {} users in {groups} groups of {members}",
                groups * members
            );
            let (run_id, list) = setup::users(&srv.base, groups * members).await?;
            let mut senders = Vec::new();
            for g in 0..groups {
                let range = g * members..(g + 1) * members;
                let conv =
                    setup::group(&list[range.start], &list[range.start + 1..range.end]).await?;
                senders.extend(range.map(|i| (i, traffic::Target::Conv(conv))));
            }
            let plan = traffic::Plan {
                scenario: "group".into(),
                online: (0..groups * members).collect(),
                senders,
                fanout: members as u64 - 1,
                follow: None,
                start_at_ms: None,
            };
            let mut r = workers::drive(
                &srv,
                transport,
                &list,
                plan,
                &run_id,
                Load {
                    rate,
                    secs: duration_secs,
                    size,
                },
                args.workers,
            )
            .await?;
            r.param("groups", groups as u64);
            r.param("members", members as u64);
            r
        }
        Scenario::LargeGroup {
            members,
            online,
            rate,
            duration_secs,
            size,
        } => {
            let members = members.max(2);
            let online = online.min(members - 1);
            eprintln!("large-group: creating {members} users, {online} of them online");
            let (run_id, list) = setup::users(&srv.base, members).await?;
            let conv = setup::group(&list[0], &list[1..]).await?;
            let plan = traffic::Plan::large_group(conv, online);
            let mut r = workers::drive(
                &srv,
                transport,
                &list,
                plan,
                &run_id,
                Load {
                    rate,
                    secs: duration_secs,
                    size,
                },
                args.workers,
            )
            .await?;
            r.param("members", members as u64);
            r.read_state = Some(setup::time_read_state(&list, conv, online).await?);
            r
        }
        Scenario::Worker { .. } | Scenario::FloodWorker { .. } => {
            unreachable!("handled above")
        }
        Scenario::Flood {
            users,
            rate,
            duration_secs,
            size,
            flooders,
            connection_flood,
            connection_rate,
        } => {
            let a = flood::Args {
                users,
                rate,
                secs: duration_secs,
                size,
                flooders,
                connection_flood,
                connection_rate,
            };
            flood::run(&srv, transport, a).await?
        }
        Scenario::Realistic {
            users,
            rate,
            duration_secs,
            warmup_secs,
            size,
            groups,
            group_pct,
            new_conv_pct,
            read_pct,
            reconnecting,
            seed,
        } => {
            if args.workers > 1 {
                return Err(BenchError::Setup(
                    "realistic runs in one process (--workers 1)".into(),
                ));
            }
            let pct = |p: u32| f64::from(p.min(100)) / 100.0;
            let shape = realistic::Shape {
                users,
                groups,
                group_share: pct(group_pct),
                new_share: pct(new_conv_pct),
                read_share: pct(read_pct),
                reconnecting,
                warmup_secs: warmup_secs.min(duration_secs.saturating_sub(1)),
                seed,
            };
            let load = Load {
                rate,
                secs: duration_secs,
                size,
            };
            realistic::run(&srv, transport, shape, load, args.data_dir.as_deref()).await?
        }
        Scenario::Populate {
            users,
            messages,
            rate,
            groups,
            seed,
        } => {
            let Some(dir) = args.data_dir.as_deref() else {
                return Err(BenchError::Setup("populate needs --data-dir".into()));
            };
            let shape = realistic::Shape {
                users,
                groups,
                group_share: 0.1,
                new_share: 0.02,
                read_share: 0.0,
                reconnecting: 0,
                warmup_secs: 0,
                seed,
            };
            let load = Load {
                rate: rate.max(1),
                secs: messages.div_ceil(rate.max(1)).max(1),
                size: 64,
            };
            let mut r = realistic::run(&srv, transport, shape, load, Some(dir)).await?;
            r.scenario = "populate".into();
            r
        }
        Scenario::Mixed {
            users,
            rate,
            members,
            online,
            group_rate,
            duration_secs,
            size,
        } => {
            mixed(
                &srv,
                transport,
                users,
                rate,
                members,
                online,
                group_rate,
                duration_secs,
                size,
            )
            .await?
        }
    };
    report::write(&args.out, &result)?;
    println!("{}", result.markdown());
    if args.after_hook {
        // The events of the run's last moments may still be on their way.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        println!(
            "after-events received: {} in {} requests",
            hook::EVENTS.load(std::sync::atomic::Ordering::Relaxed),
            hook::REQUESTS.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    if let Some(problem) = result.failure() {
        return Err(BenchError::Failed(problem));
    }
    Ok(result)
}

#[allow(clippy::too_many_arguments)]
async fn mixed(
    srv: &server::Server,
    transport: xinge_client::Transport,
    users: usize,
    rate: u64,
    members: usize,
    online: usize,
    group_rate: u64,
    secs: u64,
    size: usize,
) -> Result<BenchResult, BenchError> {
    let n = users.max(2) & !1;
    let members = members.max(2);
    let online = online.min(members - 1);
    eprintln!("mixed: creating {n} users in pairs and a group of {members} ({online} online)");
    let (run_id, pairs) = setup::users(&srv.base, n).await?;
    setup::pair_up(&pairs).await?;
    let (group_run, group_users) = setup::users(&srv.base, members).await?;
    let conv = setup::group(&group_users[0], &group_users[1..]).await?;
    eprintln!("mixed: 1:1 alone");
    let alone = traffic::run(
        srv,
        transport,
        &pairs,
        traffic::Plan::direct(&pairs),
        &format!("{run_id}a"),
        Load { rate, secs, size },
    )
    .await?;
    eprintln!("mixed: 1:1 alongside the large group");
    let group_plan = traffic::Plan::large_group(conv, online);
    let cpu0 = srv.sample();
    let run_b = format!("{run_id}b");
    let (with, group) = tokio::join!(
        traffic::run(
            srv,
            transport,
            &pairs,
            traffic::Plan::direct(&pairs),
            &run_b,
            Load { rate, secs, size }
        ),
        traffic::run(
            srv,
            transport,
            &group_users,
            group_plan,
            &group_run,
            Load {
                rate: group_rate,
                secs,
                size
            }
        ),
    );
    let cpu1 = srv.sample();
    let (with, group) = (with?, group?);
    let mut r = BenchResult::new("mixed", transport);
    for (k, v) in [
        ("users", n as u64),
        ("rate", rate),
        ("members", members as u64),
        ("online", online as u64),
        ("group_rate", group_rate),
        ("duration_secs", secs),
        ("size", size as u64),
    ] {
        r.param(k, v);
    }
    r.offered = with.offered + group.offered;
    r.sent = with.sent + group.sent;
    r.acked = with.acked + group.acked;
    r.delivered = with.delivered + group.delivered;
    r.send_errors = alone.send_errors + with.send_errors + group.send_errors;
    r.generator_overflow = with.generator_overflow + group.generator_overflow;
    r.delivered_per_s = with.delivered_per_s + group.delivered_per_s;
    r.checks = report::Checks {
        lost: alone.checks.lost + with.checks.lost + group.checks.lost,
        duplicated: alone.checks.duplicated + with.checks.duplicated + group.checks.duplicated,
        out_of_order: alone.checks.out_of_order
            + with.checks.out_of_order
            + group.checks.out_of_order,
        pulls: with.checks.pulls + group.checks.pulls,
        failed_pulls: with.checks.failed_pulls + group.checks.failed_pulls,
        reconnects: with.checks.reconnects + group.checks.reconnects,
        repairs: with.checks.repairs + group.checks.repairs,
        inline: with.checks.inline + group.checks.inline,
        pulled: with.checks.pulled + group.checks.pulled,
        stale_signals: with.checks.stale_signals + group.checks.stale_signals,
    };
    r.delivery_latency = with.delivery_latency.clone();
    r.ack_latency = with.ack_latency.clone();
    r.direct_alone_latency = Some(alone.delivery_latency.clone());
    r.group_latency = Some(group.delivery_latency.clone());
    r.delivery_hist = with.delivery_hist.clone();
    // The 1:1 and the group traffic ran at the same time against the same store.
    r.durable_writes = with.durable_writes.max(group.durable_writes);
    r.server_send = with.server_send.clone();
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        r.server_cpu_us = b.cpu_us - a.cpu_us;
        r.server_cpu_us_per_msg = r.server_cpu_us as f64 / r.delivered.max(1) as f64;
        r.server_rss_after = b.rss_bytes;
    }
    Ok(r)
}

/// After a notify run: waits for the APNs stand-in to take its last notification, and adds
/// the notifications, and the server's CPU up to then, to the result.
async fn notify_tail(srv: &server::Server, r: &mut BenchResult, collapse_ms: u64, away_pct: u32) {
    let (told, tail_s) = notify::drained(std::time::Duration::from_secs(120)).await;
    r.param("away_pct", u64::from(away_pct));
    r.param("collapse_ms", collapse_ms);
    r.param("notifications", told);
    if let (Some((start, _)), Some(now)) = (r.server_cpu_window_us, srv.sample()) {
        let cpu = now.cpu_us.saturating_sub(start);
        r.param("server_cpu_us_with_push_tail", cpu);
        eprintln!(
            "notify: {told} notifications to the APNs stand-in, the last {tail_s:.1} s after \
             the deliveries drained ({:.0}/s over the run and its tail); server CPU {:.1} µs \
             per message sent and {:.1} µs per notification, the tail included",
            told as f64 / (r.offered_secs + tail_s).max(0.001),
            cpu as f64 / r.acked.max(1) as f64,
            cpu as f64 / told.max(1) as f64,
        );
    }
}
