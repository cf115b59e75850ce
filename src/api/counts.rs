//! `GET /api/channels` and `GET /api/channel?name=`: subscriber counts, this instance's
//! from the hub, or with `scope=cluster` summed with every other live instance's from
//! Redis (`presence`).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{channel_name, Api, Refusal};
use crate::history::library::{self, TOP_ONLY};

/// The query's parameters that matter here.
struct Query {
    name: Option<String>,
    cluster: bool,
}

impl Query {
    fn parse(query: &str) -> Result<Query, Refusal> {
        let mut parsed = Query {
            name: None,
            cluster: false,
        };
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "name" => parsed.name = Some(value.into_owned()),
                "scope" => {
                    parsed.cluster = match &*value {
                        "cluster" => true,
                        "local" => false,
                        other => {
                            return Err(Refusal::bad_request(format!(
                                "scope must be cluster or local, not {other:?}"
                            )))
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(parsed)
    }
}

impl Api {
    pub(super) async fn channels(&self, query: &str) -> Result<Value, Refusal> {
        let query = Query::parse(query)?;
        let mut counts: BTreeMap<String, u64> = self
            .hub
            .counts()
            .into_iter()
            .map(|(name, n)| (name.to_string(), n as u64))
            .collect();
        if query.cluster {
            for (name, n) in self.presence.others().await.map_err(Refusal::redis)? {
                *counts.entry(name).or_default() += n;
            }
        }
        let channels: Vec<Value> = counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(channel, subscribers)| json!({"channel": channel, "subscribers": subscribers}))
            .collect();
        Ok(json!({ "channels": channels }))
    }

    pub(super) async fn channel(&self, query: &str) -> Result<Value, Refusal> {
        let query = Query::parse(query)?;
        let name = query.name.map(Value::String);
        let channel = channel_name(name.as_ref(), "name")?;
        let mut subscribers = self.hub.tape(channel).map_or(0, |tape| tape.subscribers()) as u64;
        if query.cluster {
            subscribers += self
                .presence
                .others_for(channel)
                .await
                .map_err(Refusal::redis)?;
        }
        let mut answer = json!({"channel": channel, "subscribers": subscribers});
        if self.history.find(channel).is_some() {
            answer["history"] = self.history_of(channel).await?;
        }
        Ok(answer)
    }

    /// `{"size":k,"offset":"<epoch>:<n>"}`: entries kept and the last offset (none before
    /// the channel's first kept publication).
    async fn history_of(&self, channel: &str) -> Result<Value, Refusal> {
        let redis_channel = self.prefix.to_redis(channel);
        let (_, stream) = library::keys(&redis_channel);
        let mut pipe = ::redis::pipe();
        pipe.cmd("FCALL_RO")
            .arg("herald_history")
            .arg(1)
            .arg(&redis_channel)
            .arg(TOP_ONLY)
            .cmd("XLEN")
            .arg(&stream);
        let mut conn = self.redis.clone();
        let ((epoch, top), size): ((Option<String>, u64), u64) =
            pipe.query_async(&mut conn).await.map_err(Refusal::redis)?;
        let mut history = json!({ "size": size });
        if let Some(epoch) = epoch.filter(|_| top > 0) {
            history["offset"] = Value::String(format!("{epoch}:{top}"));
        }
        Ok(history)
    }
}
