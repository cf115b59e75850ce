//! Herald on Redis Sentinel (`redis+sentinel://.../mymaster`): it asks the sentinels for
//! the master, follows a failover (resubscribe and gap-fill on the promoted replica) without
//! losing a client or a kept publication, and says clearly when the URL cannot work.

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::delivery::wait_channels;
use crate::history::{not_exactly_once, read_until_fin, Offset, PublishLog};
use crate::redis_loss::FAST_REDIS;
use crate::support::sentinel::{ask_master, role};
use crate::support::{eventually, http, secs, Client, Gateway, Sentinels};

const KEY: &str = "api-key-sentinel-7d1f0c";

/// A plain PUBLISH to the master reaches a client of a Herald that found the master
/// through the sentinels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_through_a_master_found_by_the_sentinels() {
    let set = Sentinels::start().await;
    let gw = Gateway::start(&set.url(), FAST_REDIS).await;
    gw.wait_ready(secs(10)).await;
    let mut client = Client::connect(&gw.ws_url("channels=news")).await;
    wait_channels(&set.master, &["news"], secs(5)).await;
    assert_eq!(set.master.publish("news", "hello").await, 1);
    assert_eq!(
        client.expect_message("news", secs(5)).await["data"],
        "hello"
    );
    let found = format!("127.0.0.1:{}", set.master.port());
    assert!(
        logged(&gw, "redis subscriber connected", &found),
        "no log line names the master found ({found})"
    );
}

/// SIGKILL the master while a publisher keeps publishing kept publications (retrying, on
/// error, against whatever master the sentinels name, as a real publisher would): Herald is
/// unready during the switch only, follows the promotion, resubscribes and gap-fills, and
/// every client gets every acknowledged publication once, in order, without a `gap`. The
/// server API's command connection follows the master too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_followed_without_loss() {
    const CHANNEL: &str = "h:1";
    let mut set = Sentinels::start().await;
    let args = [FAST_REDIS, &["--history", "h:*=1000/5m", "--api-key", KEY]].concat();
    let gw = Gateway::start(&set.url(), &args).await;
    gw.wait_ready(secs(10)).await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        let client = Client::connect(&gw.ws_url(&format!("channels={CHANNEL}"))).await;
        readers.push(tokio::spawn(read_until_fin(client, CHANNEL)));
    }
    let mut plain = Client::connect(&gw.ws_url("channels=live")).await;
    wait_channels(&set.master, &[CHANNEL, "live"], secs(5)).await;
    // The API's command connection in use on the old master before the failover.
    assert_eq!(api_publish(&gw, "live", json!("before")).await.0, 200);
    assert_eq!(
        plain.expect_message("live", secs(5)).await["data"],
        "before"
    );

    let old = set.master.port();
    let mut publisher = FailoverPublisher::spawn(set.sentinel_ports(), CHANNEL);
    publisher.wait_acked(300).await;
    set.master.kill9();
    gw.wait_readyz(503, secs(5)).await;
    let new = set.wait_promoted(old, secs(30)).await;
    gw.wait_ready(secs(20)).await;
    let at_switch = publisher.acked();
    publisher.wait_acked(at_switch + 300).await;
    let log = publisher.finish().await;

    let failures = not_exactly_once(readers, &log).await;
    assert!(
        failures.is_empty(),
        "{} acknowledged ({} batches failed in the switch); not every publication once, in \
         order:\n{}",
        log.acked.len(),
        log.failed_batches,
        failures.join("\n")
    );
    let m = gw.metrics().await;
    assert_eq!(
        m.value("herald_gaps_total", &[]),
        1.0,
        "only `live`: {}",
        m.text
    );

    // The plain client stayed connected: told of the gap on `live`, then served through the
    // API, whose connection must leave the dead master for the new one.
    plain.expect_gaps(&["live"], secs(5)).await;
    eventually(
        "POST /api/publish to succeed on the new master",
        secs(10),
        async || match api_publish(&gw, "live", json!("after")).await {
            (200, _) => Ok(()),
            other => Err(other),
        },
    )
    .await;
    assert_eq!(plain.expect_message("live", secs(5)).await["data"], "after");

    let (lost, found) = (format!("127.0.0.1:{old}"), format!("127.0.0.1:{new}"));
    assert!(
        logged(&gw, "redis subscriber connection down", &lost),
        "no log line names the lost master {lost}"
    );
    assert!(
        logged(&gw, "redis subscriber reconnected", &found),
        "no log line names the master found {found}"
    );
}

/// A failover whose old master stays up (`SENTINEL FAILOVER`; a partition is alike): the
/// old master keeps Herald's connection and answers as a master until the sentinels
/// reconfigure it (10 s later, measured on redis 7.0.15), so only the sentinels'
/// `+switch-master` can move Herald promptly: its subscriber, and the server API's command
/// connection, which would otherwise publish where nobody listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_with_the_old_master_alive_is_followed_promptly() {
    let set = Sentinels::start().await;
    let args = [FAST_REDIS, &["--api-key", KEY]].concat();
    let gw = Gateway::start(&set.url(), &args).await;
    gw.wait_ready(secs(10)).await;
    let mut client = Client::connect(&gw.ws_url("channels=news")).await;
    wait_channels(&set.master, &["news"], secs(5)).await;
    assert_eq!(api_publish(&gw, "news", json!("before")).await.0, 200);
    assert_eq!(
        client.expect_message("news", secs(5)).await["data"],
        "before"
    );

    let old = set.master.port();
    set.failover().await;
    let new = set.wait_promoted(old, secs(30)).await;
    // Well before the old master is reconfigured and drops its clients.
    wait_channels(set.node(new), &["news"], secs(4)).await;
    gw.wait_ready(secs(5)).await;
    client.expect_gaps(&["news"], secs(5)).await;
    assert_eq!(set.node(new).publish("news", "promoted").await, 1);
    assert_eq!(
        client.expect_message("news", secs(5)).await["data"],
        "promoted"
    );
    assert_eq!(api_publish(&gw, "news", json!("via the api")).await.0, 200);
    assert_eq!(
        client.expect_message("news", secs(5)).await["data"],
        "via the api"
    );
    assert!(
        gw.logs()
            .iter()
            .any(|l| l.contains("the sentinels switched the master")),
        "no log line tells of the switch"
    );
}

/// A URL that cannot work stops Herald at start with exit code 64; a master name no
/// sentinel knows leaves it running, unready, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_sentinel_url_is_refused_clearly() {
    for (url, says) in [
        ("redis+sentinel://127.0.0.1:26379", "names no master"),
        ("redis+sentinel://127.0.0.1:26379/", "names no master"),
        ("redis+sentinel://127.0.0.1:x/mymaster", "no valid port"),
    ] {
        let (code, stderr) = exit_of(url).await;
        assert_eq!(code, Some(64), "{url}: {stderr}");
        assert!(
            stderr.contains("HERALD_REDIS_URL") && stderr.contains(says),
            "{url}: expected {says:?}:\n{stderr}"
        );
    }

    let set = Sentinels::start().await;
    let gw = Gateway::start(&set.url_for("nosuchmaster"), FAST_REDIS).await;
    eventually(
        "a log line naming the unknown master",
        secs(10),
        async || {
            let logs = gw.logs();
            match logs.iter().any(|l| {
                l.contains("no sentinel knows a master named") && l.contains("nosuchmaster")
            }) {
                true => Ok(()),
                false => Err(logs.len()),
            }
        },
    )
    .await;
    assert_eq!(gw.get("/readyz").await.0, 503);
}

/// Herald's exit code and stderr when started on `url`; killed if it still runs after 10s
/// (a URL that should have been refused), so the test fails instead of hanging.
async fn exit_of(url: &str) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--listen", "127.0.0.1:0", "--redis-url", url])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn herald");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reading = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = tokio::time::Instant::now() + secs(10);
    let code = loop {
        if let Some(status) = child.try_wait().expect("poll herald") {
            break status.code();
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(crate::support::millis(20)).await;
    };
    (code, reading.join().expect("stderr reader"))
}

/// Whether a log line holds `message` and `node`.
fn logged(gw: &Gateway, message: &str, node: &str) -> bool {
    gw.logs()
        .iter()
        .any(|line| line.contains(message) && line.contains(&format!("\"node\":\"{node}\"")))
}

async fn api_publish(gw: &Gateway, channel: &str, data: Value) -> (u16, String) {
    let body = json!({"channel": channel, "data": data}).to_string();
    let authorization = format!("Bearer {KEY}");
    let headers = [
        ("authorization", authorization.as_str()),
        ("content-type", "application/json"),
    ];
    let url = gw.http_url("/api/publish");
    http::request("POST", &url, &headers, Some(body.into_bytes()))
        .await
        .unwrap_or_else(|e| panic!("POST /api/publish: {e}"))
}

/// Publishes `{"seq": s}` through `FCALL herald_publish`, 5 every 5 ms, to the master the
/// sentinels name: on any error the batch counts as failed (it may or may not exist) and
/// the next one asks the sentinels again, and checks ROLE, before it dials.
struct FailoverPublisher {
    stop: CancellationToken,
    acked: watch::Receiver<usize>,
    task: JoinHandle<PublishLog>,
    channel: String,
    sentinels: Vec<u16>,
}

impl FailoverPublisher {
    fn spawn(sentinels: Vec<u16>, channel: &str) -> FailoverPublisher {
        let stop = CancellationToken::new();
        let (acked_tx, acked) = watch::channel(0);
        let task = tokio::spawn({
            let (stop, channel, sentinels) = (stop.clone(), channel.to_owned(), sentinels.clone());
            async move {
                let mut log = PublishLog::default();
                let mut conn = None;
                let mut tick = tokio::time::interval(crate::support::millis(5));
                tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let mut c = match conn.clone() {
                        Some(c) => c,
                        None => match master_conn(&sentinels).await {
                            Some(c) => {
                                conn = Some(c.clone());
                                c
                            }
                            None => continue,
                        },
                    };
                    match log.fcall_next(&mut c, &channel, 5).await {
                        Ok(()) => {
                            acked_tx.send_replace(log.acked.len());
                        }
                        Err(_) => {
                            log.failed_batches += 1;
                            conn = None;
                        }
                    }
                }
                log
            }
        });
        FailoverPublisher {
            stop,
            acked,
            task,
            channel: channel.to_owned(),
            sentinels,
        }
    }

    fn acked(&self) -> usize {
        *self.acked.borrow()
    }

    async fn wait_acked(&mut self, count: usize) {
        let reached = tokio::time::timeout(secs(30), self.acked.wait_for(|n| *n >= count))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(
            reached,
            "the publisher did not reach {count} acknowledged publications within 30s (at {})",
            self.acked()
        );
    }

    /// Stops, then publishes the last publication, marked `fin`, on the current master.
    async fn finish(self) -> PublishLog {
        self.stop.cancel();
        let mut log = self.task.await.expect("publisher task");
        let seq = log.next_seq;
        log.next_seq += 1;
        let fin = json!({"seq": seq, "fin": true}).to_string();
        let offset = eventually("the fin publication on the master", secs(10), async || {
            let mut conn = master_conn(&self.sentinels).await.ok_or("no master")?;
            let mut fcall = redis::cmd("FCALL");
            fcall
                .arg("herald_publish")
                .arg(1)
                .arg(&self.channel)
                .arg(&fin);
            let offset: Option<String> = fcall
                .query_async(&mut conn)
                .await
                .map_err(|_| "FCALL failed")?;
            offset.ok_or("nil offset: not a history channel?")
        })
        .await;
        log.acked.push((seq, Offset::parse(&offset)));
        log
    }
}

/// A connection to the node the sentinels name, if it answers ROLE as a master.
async fn master_conn(sentinels: &[u16]) -> Option<redis::aio::MultiplexedConnection> {
    let port = ask_master(sentinels).await?;
    if role(port).await.ok()? != "master" {
        return None;
    }
    crate::support::redis::connect(port).await.ok()
}
