//! The commands `oncelog serve` answers, each with the reply types Redis gives, and the
//! `ONCE.*` commands for two-phase work.
//!
//! `dispatch` reads one request. Commands about the connection (`AUTH`, `HELLO`, `CLIENT`,
//! `SELECT`, ...) are answered at once; commands on the store return a future that does
//! the store's index work on its first poll and resolves once the answer is durable.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oncelog::{
    Begin, Claim, ClaimRequest, Durability, Error, KeyState, Seen, Ticket, MAX_KEY_LEN,
    MAX_OUTCOME_LEN,
};

use super::{join_in_order, Boxed, Client, Pending, Shared, Step};
use crate::resp::Reply;

/// A command, for `COMMAND`: name, arity (negative: at least that many), flags, and the
/// positions of the first and last key and the step between keys.
type Entry = (&'static str, i64, &'static [&'static str], i64, i64, i64);

/// The commands.
pub(super) const TABLE: &[Entry] = &[
    (
        "auth",
        -2,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
    ("client", -2, &["loading", "stale"], 0, 0, 0),
    ("command", -1, &["loading", "stale"], 0, 0, 0),
    ("config", -2, &["loading", "stale"], 0, 0, 0),
    ("dbsize", 1, &["readonly", "fast"], 0, 0, 0),
    ("del", -2, &["write"], 1, -1, 1),
    (
        "discard",
        1,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
    ("echo", 2, &["fast"], 0, 0, 0),
    ("exec", 1, &["noscript", "loading", "stale"], 0, 0, 0),
    ("exists", -2, &["readonly", "fast"], 1, -1, 1),
    ("get", 2, &["readonly", "fast"], 1, 1, 1),
    (
        "hello",
        -1,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
    ("info", -1, &["loading", "stale"], 0, 0, 0),
    (
        "multi",
        1,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
    ("once.abandon", 3, &["write", "fast"], 1, 1, 1),
    ("once.begin", -3, &["write", "fast"], 1, 1, 1),
    ("once.complete", 5, &["write", "fast"], 1, 1, 1),
    ("once.extend", 4, &["write", "fast"], 1, 1, 1),
    ("once.get", 2, &["readonly", "fast"], 1, 1, 1),
    ("ping", -1, &["fast"], 0, 0, 0),
    ("pttl", 2, &["readonly", "fast"], 1, 1, 1),
    ("quit", -1, &["fast"], 0, 0, 0),
    ("select", 2, &["loading", "stale", "fast"], 0, 0, 0),
    ("set", -3, &["write", "denyoom"], 1, 1, 1),
    ("ttl", 2, &["readonly", "fast"], 1, 1, 1),
    ("unlink", -2, &["write", "fast"], 1, -1, 1),
];

/// Reads one request and turns it into a reply or a future.
pub(super) fn dispatch<'a>(
    shared: &'a Shared,
    client: &mut Client,
    argv: &'a [&'a [u8]],
) -> Step<'a> {
    let Some(&command) = argv.first() else {
        return Step::Now(Reply::err("empty request"));
    };
    let Some(&(name, arity, ..)) = TABLE
        .iter()
        .find(|c| c.0.as_bytes().eq_ignore_ascii_case(command))
    else {
        return Step::Now(unknown_command(argv));
    };
    let n = argv.len() as i64;
    if (arity > 0 && n != arity) || (arity < 0 && n < -arity) {
        return Step::Now(Reply::err(format!(
            "wrong number of arguments for '{name}' command"
        )));
    }
    if !client.authenticated && !matches!(name, "auth" | "hello" | "quit") {
        return Step::Now(Reply::Error("NOAUTH Authentication required.".into()));
    }
    if let Some(step) = transaction(client, name.as_bytes()) {
        return step;
    }
    let store = &shared.store;
    let now = |reply| Step::Now(reply);
    match name {
        "ping" => now(match argv.get(1) {
            Some(text) if argv.len() == 2 => Reply::Bulk(text.to_vec()),
            Some(_) => Reply::err("wrong number of arguments for 'ping' command"),
            None => Reply::Simple("PONG"),
        }),
        "echo" => now(Reply::Bulk(argv[1].to_vec())),
        "quit" => Step::Quit,
        "select" => now(match argv[1] {
            b"0" => Reply::OK,
            _ if parse_int(argv[1]).is_some() => Reply::err("DB index is out of range"),
            _ => not_an_integer(),
        }),
        "auth" => now(auth(shared, client, &argv[1..])),
        "hello" => now(hello(shared, client, &argv[1..])),
        "client" => now(client_command(client, &argv[1..])),
        "command" => now(command_command(&argv[1..])),
        "config" => now(config_command(shared, &argv[1..])),
        // Read when polled, after the store commands sent before them took effect.
        "info" => Step::Later(Box::pin(async move { info(shared, &argv[1..]) })),
        "dbsize" => Step::Later(Box::pin(
            async move { Reply::Int(store.stats().keys as i64) },
        )),
        // A key the store cannot hold (empty, or over `MAX_KEY_LEN` bytes) is not there:
        // reads and removals answer as Redis does for a missing key.
        "get" | "once.get" if !storable(argv[1]) => now(Reply::Nil),
        "ttl" | "pttl" if !storable(argv[1]) => now(Reply::Int(-2)),
        "once.begin" | "once.complete" | "once.abandon" | "once.extend" if !storable(argv[1]) => {
            now(Reply::err(format!(
                "invalid key: keys are 1 to {MAX_KEY_LEN} bytes"
            )))
        }
        "set" => set(argv),
        "get" => Step::Later(Box::pin(async move {
            match store.get_async(argv[1]).await {
                Ok(None) => Reply::Nil,
                Ok(Some(seen)) => Reply::Bulk(seen.outcome.map(|o| o.to_vec()).unwrap_or_default()),
                Err(e) => store_error(shared, "get", e),
            }
        })),
        "exists" => Step::Later(Box::pin(async move {
            let lookups: Vec<Boxed<'_, oncelog::Result<Option<Seen>>>> = argv[1..]
                .iter()
                .filter(|key| storable(key))
                .map(|key| -> Boxed<'_, oncelog::Result<Option<Seen>>> {
                    Box::pin(store.get_async(key))
                })
                .collect();
            let mut found = 0;
            for r in join_in_order(lookups).await {
                match r {
                    Ok(seen) => found += i64::from(seen.is_some()),
                    Err(e) => return store_error(shared, "exists", e),
                }
            }
            Reply::Int(found)
        })),
        "del" | "unlink" => Step::Later(Box::pin(async move {
            let removals: Vec<Boxed<'_, oncelog::Result<bool>>> = argv[1..]
                .iter()
                .filter(|key| storable(key))
                .map(|key| -> Boxed<'_, oncelog::Result<bool>> {
                    Box::pin(store.remove_async(key))
                })
                .collect();
            let mut removed = 0;
            for r in join_in_order(removals).await {
                match r {
                    Ok(true) => removed += 1,
                    Ok(false) => {}
                    Err(e) => return store_error(shared, "del", e),
                }
            }
            Reply::Int(removed)
        })),
        "ttl" | "pttl" => {
            let (command, in_ms) = if name == "ttl" {
                ("ttl", false)
            } else {
                ("pttl", true)
            };
            Step::Later(Box::pin(async move {
                match store.get_async(argv[1]).await {
                    Ok(None) => Reply::Int(-2),
                    Ok(Some(seen)) => {
                        let left = seen
                            .expires_at
                            .duration_since(SystemTime::now())
                            .unwrap_or_default()
                            .as_millis() as i64;
                        // Redis rounds TTL to the nearest second.
                        Reply::Int(if in_ms { left } else { (left + 500) / 1000 })
                    }
                    Err(e) => store_error(shared, command, e),
                }
            }))
        }
        "once.begin" => once_begin(shared, argv),
        "once.complete" => {
            let Some(ticket) = ticket(argv[1], argv[2]) else {
                return now(bad_ticket());
            };
            let Some(ttl) = millis(argv[4]) else {
                return now(bad_millis("once.complete"));
            };
            let outcome = argv[3];
            Step::Later(Box::pin(async move {
                match store.complete_async(&ticket, outcome, ttl).await {
                    Ok(()) => Reply::OK,
                    Err(e) => store_error(shared, "once.complete", e),
                }
            }))
        }
        "once.abandon" => {
            let Some(ticket) = ticket(argv[1], argv[2]) else {
                return now(bad_ticket());
            };
            Step::Later(Box::pin(async move {
                match store.abandon_async(&ticket).await {
                    Ok(()) => Reply::OK,
                    Err(e) => store_error(shared, "once.abandon", e),
                }
            }))
        }
        "once.extend" => {
            let Some(ticket) = ticket(argv[1], argv[2]) else {
                return now(bad_ticket());
            };
            let Some(lease) = millis(argv[3]) else {
                return now(bad_millis("once.extend"));
            };
            Step::Later(Box::pin(async move {
                match store.extend_async(&ticket, lease).await {
                    Ok(()) => Reply::OK,
                    Err(e) => store_error(shared, "once.extend", e),
                }
            }))
        }
        "once.get" => Step::Later(Box::pin(async move {
            match store.get_async(argv[1]).await {
                Ok(None) => Reply::Nil,
                Ok(Some(seen)) => seen_reply(&seen),
                Err(e) => store_error(shared, "once.get", e),
            }
        })),
        _ => now(unknown_command(argv)),
    }
}

/// `SET key value NX EX seconds | PX ms | EXAT unix-seconds | PXAT unix-ms`, the options in
/// any order: `OK` if the key was new (it is claimed, with the value as its outcome), nil if
/// it is live. Every other form is refused before anything is written.
fn set<'a>(argv: &'a [&'a [u8]]) -> Step<'a> {
    const ONLY: &str = "oncelog supports only SET key value NX with one of EX seconds, \
                        PX milliseconds, EXAT unix-time-seconds, PXAT unix-time-milliseconds";
    // As Redis: every option is read before any value is checked, so a syntax error
    // anywhere wins over a bad number.
    let mut nx = false;
    let mut unsupported = false;
    let mut expiry: Option<(&[u8], &[u8])> = None;
    let mut i = 3;
    while i < argv.len() {
        let mut upper = [0u8; 8];
        let option = match argv[i] {
            o if o.len() <= upper.len() => {
                upper[..o.len()].copy_from_slice(o);
                upper[..o.len()].make_ascii_uppercase();
                &upper[..o.len()]
            }
            _ => b"?",
        };
        match option {
            b"NX" => nx = true,
            b"EX" | b"PX" | b"EXAT" | b"PXAT" => {
                let (Some(value), None) = (argv.get(i + 1), expiry) else {
                    return Step::Now(Reply::err("syntax error"));
                };
                expiry = Some((argv[i], value));
                i += 1;
            }
            b"XX" | b"GET" | b"KEEPTTL" => unsupported = true,
            _ => return Step::Now(Reply::err("syntax error")),
        }
        i += 1;
    }
    let expiry = match expiry {
        Some(_) if unsupported => None,
        Some((option, value)) => {
            let Some(n) = parse_int(value) else {
                return Step::Now(not_an_integer());
            };
            // Redis's rules: the expiry is positive and countable in milliseconds (an
            // i64), also once a relative one is added to now.
            let invalid = || Step::Now(Reply::err("invalid expire time in 'set' command"));
            if n <= 0 {
                return invalid();
            }
            let seconds =
                option.eq_ignore_ascii_case(b"EX") || option.eq_ignore_ascii_case(b"EXAT");
            let relative = option.eq_ignore_ascii_case(b"EX") || option.eq_ignore_ascii_case(b"PX");
            let Some(mut ms) = (if seconds {
                n.checked_mul(1000)
            } else {
                Some(n)
            }) else {
                return invalid();
            };
            if relative {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                let Some(at) = ms.checked_add(now) else {
                    return invalid();
                };
                ms = at;
            }
            let at = UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs());
            Some(at.min(UNIX_EPOCH + FOREVER))
        }
        None => None,
    };
    let (true, Some(at)) = (nx, expiry) else {
        return Step::Now(Reply::err(ONLY));
    };
    if argv[2].len() > MAX_OUTCOME_LEN {
        return Step::Now(Reply::err(format!(
            "value too long: {} bytes, oncelog stores at most {MAX_OUTCOME_LEN}",
            argv[2].len()
        )));
    }
    Step::SetNx(SetNx {
        key: argv[1],
        value: argv[2],
        at,
    })
}

/// What a `SET` expiry later than the store can keep (the end of year 9999) becomes: a day
/// before that, so that the store's own reading of the clock, a little later than the
/// server's, still finds it within bounds.
const FOREVER: Duration = Duration::from_millis(253_402_300_799_999 - 86_400_000);

/// A checked `SET key value NX` with its expiry, to run alone (`set_one`) or with the
/// `SET`s next to it in a pipeline (`set_group`).
pub(crate) struct SetNx<'a> {
    key: &'a [u8],
    value: &'a [u8],
    at: SystemTime,
}

/// Runs one `SET ... NX`: `OK` if the key was new, nil if it is live.
pub(crate) fn set_one<'a>(shared: &'a Shared, set: SetNx<'a>) -> Pending<'a> {
    let store = &shared.store;
    let SetNx { key, value, at } = set;
    Box::pin(async move {
        let Ok(ttl) = at.duration_since(SystemTime::now()) else {
            // An expiry already past: as in Redis, the key is set and gone at once, so
            // answer as a set would and write nothing.
            return match store.get_async(key).await {
                Ok(Some(_)) => Reply::Nil,
                Ok(None) => Reply::OK,
                Err(e) => store_error(shared, "set", e),
            };
        };
        match store
            .claim_with_outcome_async(key, value, ttl.max(Duration::from_millis(1)))
            .await
        {
            Ok(Claim::New) => Reply::OK,
            Ok(Claim::Duplicate(_)) => Reply::Nil,
            Err(e) => store_error(shared, "set", e),
        }
    })
}

/// Runs consecutive `SET ... NX` of one batch as one `claim_batch`: one index pass, one
/// append and one wait for durability, with the answers each `set_one` would have given
/// in turn. What the batch call cannot answer as they would (an expiry already past, a
/// request it refuses before doing anything) runs them one by one instead. A store error
/// (a full disk, a failed sync) is every `SET`'s answer: the run is refused or failed
/// whole.
pub(crate) fn set_group<'a>(shared: &'a Shared, sets: Vec<SetNx<'a>>) -> Boxed<'a, Vec<Reply>> {
    let store = &shared.store;
    Box::pin(async move {
        let now = SystemTime::now();
        let requests: Option<Vec<ClaimRequest<'_>>> = sets
            .iter()
            .map(|s| {
                let ttl = s.at.duration_since(now).ok()?;
                Some(
                    ClaimRequest::new(s.key, ttl.max(Duration::from_millis(1)))
                        .with_outcome(s.value),
                )
            })
            .collect();
        if let Some(requests) = requests {
            match store.claim_batch_async(&requests).await {
                Ok(answers) => {
                    return answers
                        .iter()
                        .map(|a| if a.is_new() { Reply::OK } else { Reply::Nil })
                        .collect()
                }
                // Refused before anything was done: each answers alone, below.
                Err(
                    Error::InvalidKey { .. }
                    | Error::InvalidTtl { .. }
                    | Error::OutcomeTooLarge { .. },
                ) => {}
                // The store failed the run: every SET of it gets the error. A full disk
                // refuses the run whole (alone, the first SETs might still have fitted);
                // after a failed sync each would have failed alike.
                Err(e) => return vec![store_error(shared, "set", e); sets.len()],
            }
        }
        join_in_order(sets.into_iter().map(|s| set_one(shared, s)).collect()).await
    })
}

/// `ONCE.BEGIN key lease_ms [FP fingerprint]`: see README "oncelog serve".
fn once_begin<'a>(shared: &'a Shared, argv: &'a [&'a [u8]]) -> Step<'a> {
    let Some(lease) = millis(argv[2]) else {
        return Step::Now(bad_millis("once.begin"));
    };
    let fingerprint = match &argv[3..] {
        [] => None,
        [fp, value] if fp.eq_ignore_ascii_case(b"FP") => Some(*value),
        _ => return Step::Now(Reply::err("syntax error")),
    };
    let (store, key) = (&shared.store, argv[1]);
    Step::Later(Box::pin(async move {
        let begun = match fingerprint {
            Some(fp) => store.begin_with_fingerprint_async(key, lease, fp).await,
            None => store.begin_async(key, lease).await,
        };
        match begun {
            Ok(Begin::Acquired(t)) => Reply::Array(vec![
                Reply::text("acquired"),
                Reply::text(t.to_text()),
                Reply::Int(i64::from(t.attempt())),
                Reply::Int(unix_ms(t.deadline())),
            ]),
            Ok(Begin::InFlight { until }) => {
                Reply::Array(vec![Reply::text("in-flight"), Reply::Int(unix_ms(until))])
            }
            Ok(Begin::Done(seen)) => Reply::Array(vec![
                Reply::text("done"),
                outcome(&seen),
                Reply::Int(i64::from(seen.attempt)),
            ]),
            Ok(Begin::Mismatch(seen)) => Reply::Array(vec![
                Reply::text("mismatch"),
                Reply::text(state_name(seen.state)),
                Reply::Int(i64::from(seen.attempt)),
            ]),
            Err(e) => store_error(shared, "once.begin", e),
        }
    }))
}

/// `ONCE.GET`'s answer for a key the store knows:
/// `[state, attempt, first_seen_ms, expires_ms, outcome or nil]`.
fn seen_reply(seen: &Seen) -> Reply {
    Reply::Array(vec![
        Reply::text(state_name(seen.state)),
        Reply::Int(i64::from(seen.attempt)),
        Reply::Int(unix_ms(seen.first_seen)),
        Reply::Int(unix_ms(seen.expires_at)),
        outcome(seen),
    ])
}

fn outcome(seen: &Seen) -> Reply {
    match &seen.outcome {
        Some(o) => Reply::Bulk(o.to_vec()),
        None => Reply::Nil,
    }
}

/// Whether the store can hold `key` (1 to `MAX_KEY_LEN` bytes).
fn storable(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN
}

fn state_name(state: KeyState) -> &'static str {
    match state {
        KeyState::InFlight => "in-flight",
        KeyState::Completed => "completed",
        _ => "claimed",
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn ticket(key: &[u8], text: &[u8]) -> Option<Ticket> {
    Ticket::from_text(key, std::str::from_utf8(text).ok()?)
}

fn bad_ticket() -> Reply {
    Reply::err("invalid ticket: pass the ticket ONCE.BEGIN returned, with its key")
}

/// A positive whole number of milliseconds.
fn millis(text: &[u8]) -> Option<Duration> {
    parse_int(text)
        .filter(|&n| n > 0)
        .map(|n| Duration::from_millis(n as u64))
}

fn bad_millis(command: &str) -> Reply {
    Reply::err(format!(
        "invalid milliseconds in '{command}' command: a whole number above 0"
    ))
}

/// A decimal integer as Redis reads one: optional `-`, digits, no spaces, fits in i64.
fn parse_int(text: &[u8]) -> Option<i64> {
    std::str::from_utf8(text).ok()?.parse().ok().filter(|_| {
        // No sign but `-`, and no leading zero (`0` alone is fine; `-0` is not).
        let digits = text.strip_prefix(b"-").unwrap_or(text);
        !(text.starts_with(b"+") || digits.starts_with(b"0") && text.len() > 1)
    })
}

fn not_an_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

/// A store error as a reply. A poisoned store (a failed sync) stops the server.
fn store_error(shared: &Shared, command: &str, e: Error) -> Reply {
    match e {
        Error::StaleTicket { .. } => Reply::Error(format!("STALE {e}")),
        Error::InvalidTtl { .. } => Reply::err(format!(
            "invalid expire time in '{command}' command: at least 1 ms, and at most until \
             the end of year 9999"
        )),
        Error::InvalidKey { .. }
        | Error::OutcomeTooLarge { .. }
        | Error::InvalidFingerprint { .. } => Reply::err(e),
        Error::Poisoned { .. } => {
            shared.fail();
            Reply::Error(format!("IOERR {e}"))
        }
        _ => Reply::Error(format!("IOERR {e}")),
    }
}

/// An argument as an error quotes it, as Redis does: at most 128 characters of it (each
/// up to 4 bytes), so that `reply_bound`'s estimate for errors holds.
fn shown(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).chars().take(128).collect()
}

fn unknown_command(argv: &[&[u8]]) -> Reply {
    let name = shown(argv.first().copied().unwrap_or_default());
    let mut text = format!("unknown command '{name}', with args beginning with:");
    for arg in argv.iter().skip(1).take(8) {
        text.push_str(&format!(" '{}'", shown(arg)));
    }
    Reply::err(text)
}

/// `AUTH password` or `AUTH default password`.
fn auth(shared: &Shared, client: &mut Client, args: &[&[u8]]) -> Reply {
    let Some(required) = &shared.config.requirepass else {
        // As Redis: the default user needs no password, and takes any.
        return match args {
            [_, _] if args[0] == b"default" => Reply::OK,
            [_, _] => wrong_pass(),
            [_] => Reply::err(
                "AUTH <password> called without any password configured for the default \
                 user. Are you sure your configuration is correct?",
            ),
            _ => Reply::err("syntax error"),
        };
    };
    let password = match args {
        [password] => *password,
        [user, password] if *user == b"default" => *password,
        [_, _] => return wrong_pass(),
        _ => return Reply::err("syntax error"),
    };
    if constant_time_eq(password, required.as_bytes()) {
        client.authenticated = true;
        Reply::OK
    } else {
        wrong_pass()
    }
}

fn wrong_pass() -> Reply {
    Reply::Error("WRONGPASS invalid username-password pair or user is disabled.".into())
}

/// Compares without stopping at the first difference, so that timing tells nothing of how
/// much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The Redis version whose protocol and replies the server follows, for clients that read
/// it (from `HELLO` or `INFO`) to choose what to send.
const REDIS_VERSION: &str = "7.0.0";

/// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
fn hello(shared: &Shared, client: &mut Client, args: &[&[u8]]) -> Reply {
    let mut resp3 = client.resp3;
    let mut rest = args;
    if let Some((version, tail)) = rest.split_first() {
        match *version {
            b"2" => resp3 = false,
            b"3" => resp3 = true,
            _ if parse_int(version).is_some() => {
                return Reply::Error("NOPROTO unsupported protocol version".into())
            }
            _ => return Reply::err("Protocol version is not an integer or out of range"),
        }
        rest = tail;
    }
    // Every option is read and checked before any takes effect, as in Redis: a bad one
    // leaves the client as it was, not authenticated.
    let mut name = None;
    let mut credentials = None;
    while let Some((option, tail)) = rest.split_first() {
        match (option.to_ascii_uppercase().as_slice(), tail) {
            (b"AUTH", [user, pass, more @ ..]) => {
                credentials = Some([*user, *pass]);
                rest = more;
            }
            (b"SETNAME", [n, more @ ..]) => {
                if !valid_name(n) {
                    return bad_name();
                }
                name = Some(n.to_vec());
                rest = more;
            }
            _ => {
                return Reply::err(format!("Syntax error in HELLO option '{}'", shown(option)));
            }
        }
    }
    if let Some(credentials) = credentials {
        let reply = auth(shared, client, &credentials);
        if reply != Reply::OK {
            return reply;
        }
    }
    if !client.authenticated {
        return Reply::Error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise \
             the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the \
             client and select the RESP protocol version at the same time"
                .into(),
        );
    }
    client.resp3 = resp3;
    if let Some(n) = name {
        client.name = (!n.is_empty()).then_some(n);
    }
    Reply::Map(vec![
        (Reply::text("server"), Reply::text("oncelog")),
        // Clients read `version` to choose what to send: it is the Redis version the
        // server follows, as `INFO`'s `redis_version` is.
        (Reply::text("version"), Reply::text(REDIS_VERSION)),
        (Reply::text("proto"), Reply::Int(if resp3 { 3 } else { 2 })),
        (Reply::text("id"), Reply::Int(client.id as i64)),
        (Reply::text("mode"), Reply::text("standalone")),
        (Reply::text("role"), Reply::text("master")),
        (Reply::text("modules"), Reply::Array(Vec::new())),
        (
            Reply::text("oncelog_version"),
            Reply::text(env!("CARGO_PKG_VERSION")),
        ),
    ])
}

/// `CLIENT ID | GETNAME | SETNAME name | SETINFO attr value`.
fn client_command(client: &mut Client, args: &[&[u8]]) -> Reply {
    let sub = args[0].to_ascii_uppercase();
    match (sub.as_slice(), &args[1..]) {
        (b"ID", []) => Reply::Int(client.id as i64),
        (b"GETNAME", []) => client.name.clone().map_or(Reply::Nil, Reply::Bulk),
        (b"SETNAME", [name]) => {
            if !valid_name(name) {
                return bad_name();
            }
            client.name = (!name.is_empty()).then(|| name.to_vec());
            Reply::OK
        }
        (b"SETINFO", [attr, _])
            if attr.eq_ignore_ascii_case(b"LIB-NAME") || attr.eq_ignore_ascii_case(b"LIB-VER") =>
        {
            Reply::OK
        }
        (b"SETINFO", [attr, _]) => Reply::err(format!("Unrecognized option '{}'", shown(attr))),
        (b"ID" | b"GETNAME" | b"SETNAME" | b"SETINFO", _) => Reply::err(format!(
            "wrong number of arguments for 'client|{}' command",
            String::from_utf8_lossy(&sub).to_ascii_lowercase()
        )),
        _ => Reply::err(format!(
            "unknown subcommand '{}'. Try CLIENT ID, GETNAME, SETNAME or SETINFO.",
            shown(args[0])
        )),
    }
}

/// A client name: visible ASCII only (or empty, for none).
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(u8::is_ascii_graphic)
}

fn bad_name() -> Reply {
    Reply::err("Client names cannot contain spaces, newlines or special characters.")
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name...`, `COMMAND DOCS [name...]`.
fn command_command(args: &[&[u8]]) -> Reply {
    let entry = |&(name, arity, flags, first, last, step): &Entry| {
        Reply::Array(vec![
            Reply::text(name),
            Reply::Int(arity),
            Reply::Array(flags.iter().map(|&f| Reply::Simple(f)).collect()),
            Reply::Int(first),
            Reply::Int(last),
            Reply::Int(step),
            // ACL categories, tips, key specifications, subcommands: none given.
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
            Reply::Array(Vec::new()),
        ])
    };
    let Some(sub) = args.first() else {
        return Reply::Array(TABLE.iter().map(entry).collect());
    };
    match sub.to_ascii_uppercase().as_slice() {
        b"COUNT" => Reply::Int(TABLE.len() as i64),
        b"DOCS" => super::docs::command_docs(&args[1..]),
        b"INFO" => Reply::Array(
            args[1..]
                .iter()
                .map(|name| {
                    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                    TABLE.iter().find(|c| c.0 == name).map_or(Reply::Nil, entry)
                })
                .collect(),
        ),
        _ => Reply::err(format!(
            "unknown subcommand '{}'. Try COMMAND COUNT, DOCS or INFO.",
            shown(sub)
        )),
    }
}

/// `CONFIG GET name...`: the few parameters tools ask for (nothing can be set at run time);
/// other subcommands are errors.
fn config_command(shared: &Shared, args: &[&[u8]]) -> Reply {
    match args[0].to_ascii_uppercase().as_slice() {
        b"GET" if args.len() < 2 => {
            Reply::err("wrong number of arguments for 'config|get' command")
        }
        b"GET" => {
            // The few parameters tools read to describe a server (redis-benchmark prints
            // `save` and `appendonly`), with what they mean here; nothing else is known.
            let fsync = match shared.config.durability {
                Durability::Sync => "always",
                Durability::Periodic(_) => "everysec",
                Durability::Buffered => "no",
            };
            let known = [
                ("save", String::new()),
                ("appendonly", "yes".into()),
                ("appendfsync", fsync.into()),
                ("databases", "1".into()),
                ("maxclients", shared.config.max_clients.to_string()),
            ];
            let wanted: Vec<String> = args[1..]
                .iter()
                .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
                .collect();
            Reply::Map(
                known
                    .into_iter()
                    .filter(|(k, _)| wanted.iter().any(|w| w == k || w == "*"))
                    .map(|(k, v)| (Reply::text(k), Reply::text(v)))
                    .collect(),
            )
        }
        _ => Reply::err(format!(
            "unknown subcommand '{}'. oncelog answers only CONFIG GET, with nothing.",
            shown(args[0])
        )),
    }
}

/// `INFO [section ...]`: server, clients, persistence, stats, keyspace.
fn info(shared: &Shared, args: &[&[u8]]) -> Reply {
    let s = shared.store.stats();
    let durability = match shared.config.durability {
        Durability::Sync => "sync".to_string(),
        Durability::Buffered => "buffered".to_string(),
        Durability::Periodic(d) => format!("periodic:{}ms", d.as_millis()),
    };
    let sections: [(&str, Vec<(&str, String)>); 5] = [
        (
            "server",
            vec![
                ("oncelog_version", env!("CARGO_PKG_VERSION").into()),
                ("redis_version", REDIS_VERSION.into()),
                ("redis_mode", "standalone".into()),
                ("process_id", std::process::id().to_string()),
                ("tcp_port", shared.port.to_string()),
                (
                    "uptime_in_seconds",
                    shared.started.elapsed().as_secs().to_string(),
                ),
            ],
        ),
        (
            "clients",
            vec![
                (
                    "connected_clients",
                    shared
                        .clients
                        .load(std::sync::atomic::Ordering::Relaxed)
                        .to_string(),
                ),
                ("maxclients", shared.config.max_clients.to_string()),
            ],
        ),
        (
            "persistence",
            vec![
                ("dir", shared.config.dir.display().to_string()),
                ("durability", durability),
                ("loading", "0".into()),
                ("recovery_time_ms", s.recovery_time.as_millis().to_string()),
                ("recovered_records", s.recovered_records.to_string()),
                (
                    "recovery_hinted_segments",
                    s.recovery_hinted_segments.to_string(),
                ),
                (
                    "recovery_truncated_bytes",
                    s.recovery_truncated_bytes.to_string(),
                ),
                (
                    "recovery_extended_bytes",
                    s.recovery_extended_bytes.to_string(),
                ),
                ("syncs", s.syncs.to_string()),
                ("durability_waiters", s.durability_waiters.to_string()),
            ],
        ),
        (
            "stats",
            vec![
                ("claims", s.claims.to_string()),
                ("new", s.new.to_string()),
                ("duplicates", s.duplicates.to_string()),
                ("expired_reclaimed", s.expired.to_string()),
                ("removes", s.removes.to_string()),
                ("acquired", s.acquired.to_string()),
                ("completed", s.completed.to_string()),
                ("abandoned", s.abandoned.to_string()),
                ("extended", s.extended.to_string()),
                ("segments", s.segments.to_string()),
                ("disk_bytes", s.disk_bytes.to_string()),
                ("index_bytes", s.index_bytes.to_string()),
                ("damaged_segments", s.damaged_segments.to_string()),
                ("maintenance_errors", s.maintenance_errors.to_string()),
            ],
        ),
        (
            "keyspace",
            // As Redis: a database with no keys has no line.
            (s.keys > 0)
                .then(|| {
                    (
                        "db0",
                        format!("keys={},expires={},avg_ttl=0", s.keys, s.keys),
                    )
                })
                .into_iter()
                .collect(),
        ),
    ];
    let wanted: Vec<String> = args
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    let all = wanted.is_empty()
        || wanted
            .iter()
            .any(|w| w == "all" || w == "everything" || w == "default");
    let mut text = String::new();
    for (name, fields) in &sections {
        if !all && !wanted.iter().any(|w| w == name) {
            continue;
        }
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        let mut title = name.to_string();
        title[..1].make_ascii_uppercase();
        text.push_str(&format!("# {title}\r\n"));
        for (k, v) in fields {
            text.push_str(&format!("{k}:{v}\r\n"));
        }
    }
    Reply::Verbatim(text)
}

/// `MULTI`, `EXEC`, `DISCARD`, and every command between them. oncelog has no
/// transactions; a client that sends `MULTI` expects the commands up to `EXEC` to run
/// together or not at all, so none of them runs: each is refused, and `EXEC` answers
/// `EXECABORT`, as Redis does when a queued command is refused. (A client library's
/// default pipeline, redis-py's, wraps its commands in `MULTI`/`EXEC`: it gets an error,
/// and nothing is written.) `None` for any other command outside `MULTI`.
fn transaction<'a>(client: &mut Client, command: &[u8]) -> Option<Step<'a>> {
    let is = |name: &[u8]| command.eq_ignore_ascii_case(name);
    let reply = if is(b"MULTI") {
        if client.in_multi {
            Reply::err("MULTI calls can not be nested")
        } else {
            client.in_multi = true;
            Reply::err(
                "oncelog does not support MULTI/EXEC: the commands up to EXEC will not run \
                 (send them without MULTI)",
            )
        }
    } else if is(b"EXEC") {
        if !std::mem::take(&mut client.in_multi) {
            Reply::err("EXEC without MULTI")
        } else {
            Reply::Error(
                "EXECABORT Transaction discarded: oncelog does not support MULTI/EXEC".into(),
            )
        }
    } else if is(b"DISCARD") {
        if std::mem::take(&mut client.in_multi) {
            Reply::OK
        } else {
            Reply::err("DISCARD without MULTI")
        }
    } else if client.in_multi && !is(b"QUIT") {
        Reply::err("not run: inside MULTI, which oncelog does not support")
    } else {
        return None;
    };
    Some(Step::Now(reply))
}

/// The most bytes the reply to `args` (ranges into `input`, read under `limits`) can take,
/// for bounding a batch's replies: a stored value for the commands that return one, the
/// argument for `ECHO`/`PING`, the longest name for `CLIENT` (`GETNAME`), a few KiB for the
/// listings and a little more for each command `COMMAND INFO` or `COMMAND DOCS` names, a
/// little for the rest.
pub(super) fn reply_bound(
    input: &[u8],
    args: &[std::ops::Range<usize>],
    limits: &crate::resp::Limits,
) -> usize {
    let arg = |i: usize| {
        args.get(i)
            .and_then(|r| input.get(r.clone()))
            .unwrap_or_default()
    };
    let name = arg(0);
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    if is(b"GET") || is(b"ONCE.GET") || is(b"ONCE.BEGIN") {
        MAX_OUTCOME_LEN + 256
    } else if is(b"ECHO") || is(b"PING") {
        arg(1).len() + 32
    } else if is(b"CLIENT") && arg(1).eq_ignore_ascii_case(b"GETNAME") {
        // A name set by an earlier request: at most one argument long.
        limits.max_bulk + 64
    } else if is(b"INFO") || is(b"COMMAND") || is(b"HELLO") {
        // `COMMAND DOCS` with no name is under 16 KiB, each command's under 1 KiB
        // (docs.rs tests both), and a name may be given many times.
        (16 << 10) + args.len() * 1024
    } else {
        // Errors echo at most 8 arguments of 128 characters (up to 4 bytes each).
        8 * 128 * 4 + 256
    }
}
