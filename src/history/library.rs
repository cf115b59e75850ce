//! The Redis function library `herald`: the one atomic publish path for history channels,
//! and the history read.
//!
//! Publishers call `FCALL herald_publish 1 <redis-channel> <payload>`, so the rules (which
//! channels keep how much, for how long) and the channel prefix must live in Redis: they
//! are compiled into the library's source, which Herald loads with FUNCTION LOAD REPLACE
//! whenever its subscriber connects. In one step the function numbers the publication,
//! appends it to the channel's stream and publishes it with its offset, so the live copy
//! and the kept copy can never disagree (the design Centrifuge uses, in a script, for the
//! same reason: see the research notes, section 1.2).

use super::offset::ENVELOPE;
use super::rules::Rules;

/// The library's name in `FUNCTION LIST`.
pub const NAME: &str = "herald";

/// How long a channel's meta hash (epoch and last number) outlives its last publication:
/// far longer than any history, so a client resuming after the stream expired learns that
/// history does not reach back (same epoch, entries gone) rather than seeing a new epoch.
pub const META_TTL_SECS: u64 = 30 * 24 * 3600;

/// The meta hash and stream keys of Redis channel `channel`. Both carry the channel name
/// as hash tag, so on a Cluster they live in the channel's slot (research notes, 1.1).
pub fn keys(channel: &str) -> (String, String) {
    (
        format!("herald:{{{channel}}}:m"),
        format!("herald:{{{channel}}}:s"),
    )
}

/// An `after` beyond any offset: `herald_history` then answers epoch and top only, and a
/// subscriber's read uses `herald_anchor` instead (see there).
pub const TOP_ONLY: u64 = 9_007_199_254_740_991;

/// The library's source for this prefix and these rules; `sharded` (a Redis Cluster):
/// publications go out with SPUBLISH, to the shard channel Herald subscribes with
/// SSUBSCRIBE on the master that runs the function (the channel's slot, the keys' too).
pub fn source(prefix: &str, rules: &Rules, sharded: bool) -> String {
    let publish = if sharded { "SPUBLISH" } else { "PUBLISH" };
    let mut table = String::new();
    for rule in rules.iter() {
        table.push_str(&format!(
            "  {{'{}', {}, {}}},\n",
            lua_pattern(&rule.pattern),
            rule.size,
            rule.ttl.as_millis()
        ));
    }
    let envelope = ENVELOPE
        .iter()
        .map(|b| format!("\\{b}"))
        .collect::<String>();
    format!(
        r#"#!lua name={NAME}
-- Loaded by Herald (FUNCTION LOAD REPLACE); generated from HERALD_HISTORY and
-- HERALD_CHANNEL_PREFIX. Every instance sharing this Redis must use the same settings.
local PREFIX = '{prefix}'
local RULES = {{
{table}}}
local META_TTL = {META_TTL_SECS}
local ENVELOPE = '{envelope}'
local PUBLISH = '{publish}'

local function rule_for(channel)
  if string.sub(channel, 1, #PREFIX) ~= PREFIX then return nil end
  local name = string.sub(channel, #PREFIX + 1)
  for _, rule in ipairs(RULES) do
    if string.find(name, rule[1]) then return rule end
  end
  return nil
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function keys_of(channel)
  return 'herald:{{' .. channel .. '}}:m', 'herald:{{' .. channel .. '}}:s'
end

-- Stream entry ids are '<n>-0'; fields are d (payload) then t (Redis time, ms).
local function number_of(id)
  return tonumber(string.match(id, '^(%d+)'))
end

-- The channel's epoch, minted when its history has none.
local function epoch_of(meta, stream)
  local epoch = redis.call('HGET', meta, 'e')
  if not epoch then
    -- A new life of this channel's history: numbering restarts, so any stream left
    -- from an earlier life (the meta hash evicted alone) must go.
    local t = redis.call('TIME')
    epoch = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'e', epoch, 's', 0)
  end
  return epoch
end

local function publish(keys, args)
  local channel, payload = keys[1], args[1]
  local rule = rule_for(channel)
  if not rule then
    redis.call(PUBLISH, channel, payload)
    return nil
  end
  local meta, stream = keys_of(channel)
  local epoch = epoch_of(meta, stream)
  local n = redis.call('HINCRBY', meta, 's', 1)
  redis.call('EXPIRE', meta, META_TTL)
  local now = now_ms()
  redis.call('XADD', stream, 'MAXLEN', rule[2], string.format('%d-0', n), 'd', payload, 't', now)
  -- Age: each publication removes up to two expired entries from the front, so the
  -- stream sheds old entries at least as fast as it grows; the key itself expires a TTL
  -- after the last publication.
  local cut = nil
  for _, entry in ipairs(redis.call('XRANGE', stream, '-', '+', 'COUNT', 2)) do
    if tonumber(entry[2][4]) < now - rule[3] then cut = number_of(entry[1]) + 1 end
  end
  if cut then redis.call('XTRIM', stream, 'MINID', string.format('%d-0', cut)) end
  redis.call('PEXPIRE', stream, rule[3])
  local offset = epoch .. ':' .. string.format('%d', n)
  redis.call(PUBLISH, channel, ENVELOPE .. offset .. '\0' .. payload)
  return offset
end

-- {{epoch or false, top, n1, d1, n2, d2, ...}}: the kept entries after number `after`
-- that are younger than the TTL, read in one step with the epoch and top they belong to.
local function history(keys, args)
  local channel, after = keys[1], tonumber(args[1])
  local meta, stream = keys_of(channel)
  local m = redis.call('HMGET', meta, 'e', 's')
  if not m[1] then return {{false, 0}} end
  local top = tonumber(m[2])
  local out = {{m[1], top}}
  local rule = rule_for(channel)
  if not rule or after >= top then return out end
  local oldest = now_ms() - rule[3]
  for _, entry in ipairs(redis.call('XRANGE', stream, string.format('%d-0', after + 1), '+')) do
    if tonumber(entry[2][4]) >= oldest then
      table.insert(out, number_of(entry[1]))
      table.insert(out, entry[2][2])
    end
  end
  return out
end

-- {{epoch, top}} of a channel Herald starts to carry. A channel never published to gets
-- its epoch now: its subscribers then hold an offset (<epoch>:0) from the start, and can
-- resume across a drop before the first publication; a later loss of the history shows
-- as a new epoch rather than passing unseen.
local function anchor(keys, args)
  local channel = keys[1]
  if not rule_for(channel) then return {{false, 0}} end
  local meta, stream = keys_of(channel)
  local epoch = epoch_of(meta, stream)
  redis.call('EXPIRE', meta, META_TTL)
  return {{epoch, tonumber(redis.call('HGET', meta, 's'))}}
end

redis.register_function('herald_publish', publish)
redis.register_function('herald_anchor', anchor)
redis.register_function{{function_name = 'herald_history', callback = history, flags = {{'no-writes'}}}}
"#
    )
}

/// A `*` pattern as an anchored Lua pattern: every other character escaped.
fn lua_pattern(glob: &str) -> String {
    let mut out = String::from("^");
    for c in glob.chars() {
        match c {
            '*' => out.push_str(".*"),
            c if c.is_ascii_alphanumeric() => out.push(c),
            c => {
                out.push('%');
                out.push(c);
            }
        }
    }
    out.push('$');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_become_anchored_lua_patterns() {
        assert_eq!(lua_pattern("chat:*"), "^chat%:.*$");
        assert_eq!(lua_pattern("a.b-c/*=x"), "^a%.b%-c%/.*%=x$");
    }

    #[test]
    fn the_source_carries_prefix_rules_and_every_function() {
        let rules = Rules::parse("chat:*=300/5m").unwrap();
        let source = source("app.", &rules, false);
        assert!(source.starts_with("#!lua name=herald\n"));
        assert!(source.contains("local PREFIX = 'app.'"));
        assert!(source.contains("{'^chat%:.*$', 300, 300000}"));
        assert!(source.contains(r"local ENVELOPE = '\0\104\101"));
        assert!(source.contains("local PUBLISH = 'PUBLISH'"));
        assert!(super::source(".", &rules, true).contains("local PUBLISH = 'SPUBLISH'"));
        for function in ["'herald_publish'", "'herald_history'", "'herald_anchor'"] {
            assert!(source.contains(function), "{function}");
        }
    }
}
