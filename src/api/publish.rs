//! `POST /api/publish` and `POST /api/disconnect`: both are one command to Redis.
//!
//! A publication goes the way a backend's would: `PUBLISH` (`SPUBLISH` on a Cluster), or
//! on a history channel `FCALL herald_publish`, so it is numbered and kept atomically and
//! every instance (this one too) receives it from Redis. `data` is published as the JSON
//! text it arrived as, so subscribers receive it exactly as sent.

use serde_json::{json, value::RawValue, Value};

use super::{channel_name, object, Api, Refusal};

impl Api {
    pub(super) async fn publish(&self, body: &[u8]) -> Result<Value, Refusal> {
        let fields = object(body)?;
        let channel = channel_name(fields.get("channel"), "channel")?;
        if !fields.contains_key("data") {
            return Err(Refusal::bad_request("missing \"data\""));
        }
        // The text as sent (the map above normalised it): `data`'s own bytes.
        #[derive(serde::Deserialize)]
        struct Data<'a> {
            #[serde(borrow)]
            data: &'a RawValue,
        }
        let data = serde_json::from_slice::<Data>(body)
            .map_err(|e| Refusal::bad_request(format!("\"data\": {e}")))?
            .data
            .get();
        let redis_channel = self.prefix.to_redis(channel);
        let mut conn = self.redis.clone();
        if self.history.find(channel).is_none() {
            // On a Cluster, to the channel's master only, where Herald SSUBSCRIBEs it.
            let command = if self.redis.is_cluster() {
                "SPUBLISH"
            } else {
                "PUBLISH"
            };
            let mut publish = ::redis::cmd(command);
            publish.arg(&redis_channel).arg(data);
            let _: i64 = publish
                .query_async(&mut conn)
                .await
                .map_err(Refusal::redis)?;
            return Ok(json!({}));
        }
        let mut fcall = ::redis::cmd("FCALL");
        fcall
            .arg("herald_publish")
            .arg(1)
            .arg(&redis_channel)
            .arg(data);
        let offset: Option<String> = fcall.query_async(&mut conn).await.map_err(Refusal::redis)?;
        Ok(match offset {
            Some(offset) => json!({ "offset": offset }),
            // The library Redis holds has no rule for it: instances disagree on
            // HERALD_HISTORY. Published, not kept.
            None => json!({}),
        })
    }

    pub(super) async fn disconnect(&self, body: &[u8]) -> Result<Value, Refusal> {
        let fields = object(body)?;
        let user = match fields.get("user") {
            Some(Value::String(user)) if !user.is_empty() => user,
            Some(Value::String(_)) => return Err(Refusal::bad_request("\"user\" is empty")),
            Some(_) => return Err(Refusal::bad_request("\"user\" must be a string")),
            None => return Err(Refusal::bad_request("missing \"user\"")),
        };
        // Every instance, this one included, hears it on the control channel.
        let mut publish = ::redis::cmd("PUBLISH");
        publish
            .arg(self.prefix.control())
            .arg(json!({ "disconnect": user }).to_string());
        let mut conn = self.redis.clone();
        let _: i64 = publish
            .query_async(&mut conn)
            .await
            .map_err(Refusal::redis)?;
        Ok(json!({}))
    }
}
