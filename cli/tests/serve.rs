//! `oncelog serve` driven by a Redis client it did not write (the `redis` crate) and by raw
//! bytes over TCP: every command's replies, pipelining, many connections claiming the same
//! keys, leases across connections, auth, limits, malformed frames, SIGTERM, kill -9.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::{Connection, Value};

/// A running `oncelog serve`; SIGKILLed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(dir: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_oncelog"))
            .arg("serve")
            .arg("--dir")
            .arg(dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn oncelog serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("expected `listening on ADDR`, got {line:?}"))
            .to_string();
        Server { child, addr }
    }

    fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    fn connect(&self) -> Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .expect("connect")
    }

    fn raw(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Waits for the process to exit; its status and stderr.
    fn wait(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut err).unwrap();
        }
        (status, err)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn q(con: &mut Connection, args: &[&str]) -> redis::RedisResult<Value> {
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(con)
}

fn ok(con: &mut Connection, args: &[&str]) -> Value {
    q(con, args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn err(con: &mut Connection, args: &[&str]) -> String {
    match q(con, args) {
        Err(e) => e.to_string(),
        Ok(v) => panic!("{args:?}: expected an error, got {v:?}"),
    }
}

fn bulk(v: &[u8]) -> Value {
    Value::BulkString(v.to_vec())
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(n) => *n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

#[test]
fn every_command_answers_as_redis_does() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.connect();

    assert_eq!(
        ok(&mut c, &["SET", "k", "v1", "NX", "EX", "100"]),
        Value::Okay
    );
    assert_eq!(
        ok(&mut c, &["SET", "k", "v2", "NX", "EX", "100"]),
        Value::Nil
    );
    assert_eq!(
        ok(&mut c, &["set", "k", "v3", "px", "5000", "nx"]),
        Value::Nil
    );
    assert_eq!(ok(&mut c, &["GET", "k"]), bulk(b"v1"));
    assert_eq!(ok(&mut c, &["GET", "absent"]), Value::Nil);
    let ttl = int(&ok(&mut c, &["TTL", "k"]));
    assert!((99..=100).contains(&ttl), "TTL {ttl}");
    let pttl = int(&ok(&mut c, &["PTTL", "k"]));
    assert!((90_000..=100_000).contains(&pttl), "PTTL {pttl}");
    assert_eq!(int(&ok(&mut c, &["TTL", "absent"])), -2);
    assert_eq!(int(&ok(&mut c, &["PTTL", "absent"])), -2);
    // Absolute expiries, and one already past: answered as a set, nothing written.
    let in_an_hour = (std::time::SystemTime::now() + Duration::from_secs(3600))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let exat = in_an_hour.as_secs().to_string();
    let pxat = in_an_hour.as_millis().to_string();
    assert_eq!(
        ok(&mut c, &["SET", "a", "x", "NX", "EXAT", &exat]),
        Value::Okay
    );
    assert_eq!(
        ok(&mut c, &["SET", "b", "x", "NX", "PXAT", &pxat]),
        Value::Okay
    );
    assert_eq!(
        ok(&mut c, &["SET", "past", "x", "NX", "EXAT", "1000"]),
        Value::Okay
    );
    assert_eq!(ok(&mut c, &["GET", "past"]), Value::Nil);
    assert_eq!(
        ok(&mut c, &["SET", "a", "x", "NX", "EXAT", "1000"]),
        Value::Nil
    );

    assert_eq!(int(&ok(&mut c, &["EXISTS", "k", "k", "absent", "a"])), 3);
    assert_eq!(int(&ok(&mut c, &["DBSIZE"])), 3);
    assert_eq!(int(&ok(&mut c, &["DEL", "k", "absent", "b"])), 2);
    assert_eq!(ok(&mut c, &["GET", "k"]), Value::Nil);
    assert_eq!(int(&ok(&mut c, &["UNLINK", "a"])), 1);
    assert_eq!(
        ok(&mut c, &["SET", "k", "again", "NX", "EX", "100"]),
        Value::Okay
    );

    // The forms oncelog cannot honour exactly: an error naming the supported one, and
    // nothing written.
    for form in [
        &["SET", "f", "v"][..],
        &["SET", "f", "v", "NX"],
        &["SET", "f", "v", "EX", "10"],
        &["SET", "f", "v", "XX", "EX", "10"],
        &["SET", "f", "v", "NX", "KEEPTTL"],
        &["SET", "f", "v", "NX", "GET", "EX", "10"],
    ] {
        let e = err(&mut c, form);
        assert!(e.contains("SET key value NX"), "{form:?}: {e}");
    }
    assert!(err(&mut c, &["SET", "f", "v", "NX", "EX", "0"]).contains("invalid expire time"));
    // Expiries past the store's last (the end of year 9999) are taken, as Redis takes
    // them, and kept until then; one that milliseconds cannot count is refused.
    for (i, (unit, n)) in [
        ("EXAT", "300000000000"),
        ("PXAT", "9223372036854775807"),
        ("EX", "1000000000000"),
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("far{i}");
        assert_eq!(ok(&mut c, &["SET", &key, "v", "NX", unit, n]), Value::Okay);
        let years = int(&ok(&mut c, &["TTL", &key])) / (365 * 86_400);
        assert!((7_900..8_000).contains(&years), "{unit} {n}: {years} years");
        assert_eq!(ok(&mut c, &["SET", &key, "v", "NX", unit, n]), Value::Nil);
        assert_eq!(int(&ok(&mut c, &["DEL", &key])), 1);
    }
    assert!(
        err(&mut c, &["SET", "f", "v", "NX", "EX", "9223372036854775"])
            .contains("invalid expire time")
    );
    assert!(err(&mut c, &["SET", "f", "v", "NX", "EX", "1x"]).contains("not an integer"));
    assert!(err(&mut c, &["SET", "f", "v", "NX", "EX", "1", "PX", "5"]).contains("syntax"));
    let long = "v".repeat(oncelog::MAX_OUTCOME_LEN + 1);
    assert!(err(&mut c, &["SET", "f", &long, "NX", "EX", "10"]).contains("too long"));
    assert!(err(&mut c, &["SET", "", "v", "NX", "EX", "10"]).contains("key"));
    assert_eq!(ok(&mut c, &["GET", "f"]), Value::Nil);

    assert_eq!(ok(&mut c, &["PING"]), Value::SimpleString("PONG".into()));
    assert_eq!(ok(&mut c, &["PING", "hi"]), bulk(b"hi"));
    assert_eq!(ok(&mut c, &["ECHO", "x y"]), bulk(b"x y"));
    assert_eq!(ok(&mut c, &["SELECT", "0"]), Value::Okay);
    assert!(err(&mut c, &["SELECT", "1"]).contains("out of range"));
    assert!(err(&mut c, &["GET"]).contains("wrong number of arguments for 'get'"));
    assert!(err(&mut c, &["NOSUCH", "a"]).contains("unknown command 'NOSUCH'"));
    assert!(err(&mut c, &["AUTH", "pw"]).contains("without any password"));

    let id = int(&ok(&mut c, &["CLIENT", "ID"]));
    assert!(id > 0);
    assert_eq!(ok(&mut c, &["CLIENT", "GETNAME"]), Value::Nil);
    assert_eq!(ok(&mut c, &["CLIENT", "SETNAME", "worker-1"]), Value::Okay);
    assert_eq!(ok(&mut c, &["CLIENT", "GETNAME"]), bulk(b"worker-1"));
    assert_eq!(
        ok(&mut c, &["CLIENT", "SETINFO", "LIB-NAME", "x"]),
        Value::Okay
    );
    assert!(int(&ok(&mut c, &["COMMAND", "COUNT"])) >= 20);
    let Value::Array(table) = ok(&mut c, &["COMMAND"]) else {
        panic!("COMMAND is an array")
    };
    assert_eq!(table.len() as i64, int(&ok(&mut c, &["COMMAND", "COUNT"])));
    // COMMAND DOCS, which redis-cli reads for its hints: every command, in RESP2 an array
    // of names and documentation in turn; for named commands only those the server knows.
    let Value::Array(docs) = ok(&mut c, &["COMMAND", "DOCS"]) else {
        panic!("COMMAND DOCS is an array in RESP2")
    };
    assert_eq!(docs.len(), 2 * table.len());
    let Value::Array(set) = ok(&mut c, &["COMMAND", "DOCS", "set", "nosuch"]) else {
        panic!("COMMAND DOCS set is an array in RESP2")
    };
    assert_eq!(set[0], bulk(b"set"));
    assert_eq!(set.len(), 2);
    let text = format!("{:?}", set[1]);
    for field in ["summary", "arguments", "expiration", "PXAT"] {
        assert!(text.contains(field), "{field} missing from {text}");
    }
    let info: String = redis::cmd("INFO").query(&mut c).unwrap();
    for field in [
        "# Server",
        "oncelog_version:",
        "durability:sync",
        "db0:keys=1,",
    ] {
        assert!(info.contains(field), "INFO lacks {field}:\n{info}");
    }
    let keyspace: String = redis::cmd("INFO").arg("keyspace").query(&mut c).unwrap();
    assert!(keyspace.starts_with("# Keyspace") && !keyspace.contains("# Server"));

    // RESP3 after HELLO 3: a map, and nulls as `_`.
    let mut raw = server.raw();
    raw.write_all(b"HELLO 3\r\nGET nothing\r\nHELLO 2\r\nGET nothing\r\n")
        .unwrap();
    let text = read_until(&mut raw, b"$-1\r\n");
    assert!(text.starts_with("%8\r\n"), "{text}");
    assert!(text.contains("$5\r\nproto\r\n:3\r\n"), "{text}");
    assert!(text.contains("\r\n_\r\n*16\r\n"), "{text}");
    assert!(text.contains("$5\r\nproto\r\n:2\r\n"), "{text}");
    // `HELLO`'s version is the Redis version `INFO` names (clients choose what to send
    // by it); oncelog's own goes in a field of its own.
    let redis_version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .expect("INFO names a redis_version");
    let hello_version = format!(
        "$7\r\nversion\r\n${}\r\n{redis_version}\r\n",
        redis_version.len()
    );
    assert!(text.contains(&hello_version), "{text}");
    assert!(text.contains("$15\r\noncelog_version\r\n"), "{text}");

    // In RESP3, `INFO` is a verbatim string of format `txt`, as Redis 7 sends it.
    raw.write_all(b"HELLO 3\r\nINFO keyspace\r\n").unwrap();
    let text = read_until(&mut raw, b"avg_ttl=0\r\n\r\n");
    let at = text.find("\r\n=").expect("a verbatim string") + 2;
    let (len, rest) = text[at + 1..].split_once("\r\n").unwrap();
    assert!(rest.starts_with("txt:# Keyspace\r\n"), "{text}");
    assert_eq!(len.parse::<usize>().unwrap(), rest.len() - 2, "{text}");
}

/// Reads from `s` until what was read ends with `end`.
fn read_until(s: &mut TcpStream, end: &[u8]) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(end) {
        let n = s.read(&mut buf).expect("read");
        assert!(
            n > 0,
            "closed early after {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn pipelined_commands_take_effect_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.connect();
    let mut pipe = redis::pipe();
    for i in 0..600 {
        let k = format!("p{}", i % 200);
        pipe.cmd("SET").arg(&k).arg(i).arg("NX").arg("EX").arg(60);
        pipe.cmd("GET").arg(&k);
        if i % 7 == 0 {
            pipe.cmd("DEL").arg(&k);
        }
    }
    let replies: Vec<Value> = pipe.query(&mut c).unwrap();
    // Replay the same sequence against a model, in order.
    let mut model: HashMap<String, String> = HashMap::new();
    let mut want = Vec::new();
    for i in 0..600 {
        let k = format!("p{}", i % 200);
        if model.contains_key(&k) {
            want.push(Value::Nil);
        } else {
            model.insert(k.clone(), i.to_string());
            want.push(Value::Okay);
        }
        want.push(bulk(model[&k].as_bytes()));
        if i % 7 == 0 {
            model.remove(&k);
            want.push(Value::Int(1));
        }
    }
    assert_eq!(replies, want);
}

/// Consecutive `SET ... NX` of a pipeline run as one batch in the store; each still
/// answers as it would have alone, in turn: a key repeated in the run, a key already live,
/// each its own expiry, an expiry already past, and a refused key among good ones.
#[test]
fn a_run_of_pipelined_sets_answers_as_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.connect();
    assert_eq!(
        ok(&mut c, &["SET", "live", "v0", "NX", "EX", "100"]),
        Value::Okay
    );
    let mut s = server.raw();
    s.write_all(
        b"SET a 1 NX EX 100\r\nSET b 2 NX PX 5000\r\nSET a 3 NX EX 100\r\n\
          SET live 4 NX EX 100\r\nSET c 7 NX EX 1000\r\n\
          GET a\r\nGET b\r\nGET live\r\nPTTL b\r\nTTL c\r\nPING\r\n",
    )
    .unwrap();
    let text = read_until(&mut s, b"+PONG\r\n");
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(
        &lines[..11],
        ["+OK", "+OK", "$-1", "$-1", "+OK", "$1", "1", "$1", "2", "$2", "v0"],
        "{text}"
    );
    let pttl: i64 = lines[11].strip_prefix(':').unwrap().parse().unwrap();
    assert!((4_000..=5_000).contains(&pttl), "{text}");
    assert_eq!(&lines[12..14], [":1000", "+PONG"], "{text}");

    // An expiry already past: answered as set, nothing written; the others stay.
    s.write_all(b"SET past 5 NX PXAT 1000\r\nSET d 8 NX EX 100\r\nGET past\r\nGET d\r\n")
        .unwrap();
    assert_eq!(
        read_until(&mut s, b"8\r\n"),
        "+OK\r\n+OK\r\n$-1\r\n$1\r\n8\r\n"
    );

    // A refused key among good ones: its error, and the others done.
    let long = "k".repeat(oncelog::MAX_KEY_LEN + 1);
    let request =
        format!("SET e 9 NX EX 100\r\nSET {long} 6 NX EX 100\r\nSET e 10 NX EX 100\r\nGET e\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let text = read_until(&mut s, b"9\r\n");
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(lines[0], "+OK", "{text}");
    assert!(lines[1].starts_with("-ERR invalid key"), "{text}");
    assert_eq!(&lines[2..5], ["$-1", "$1", "9"], "{text}");

    // In RESP3 a duplicate is a null.
    s.write_all(b"HELLO 3\r\nSET r 1 NX EX 100\r\nSET r 2 NX EX 100\r\nPING\r\n")
        .unwrap();
    let text = read_until(&mut s, b"+PONG\r\n");
    assert!(text.ends_with("+OK\r\n_\r\n+PONG\r\n"), "{text}");
}

#[test]
fn many_connections_claim_each_key_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let firsts = Arc::new(Mutex::new(HashMap::<u32, usize>::new()));
    std::thread::scope(|s| {
        for t in 0..64usize {
            let (server, firsts) = (&server, Arc::clone(&firsts));
            s.spawn(move || {
                let mut c = server.connect();
                for i in 0..300u32 {
                    // Overlapping keys, each thread in its own order.
                    let k = (i * 7 + t as u32 * 13) % 1000;
                    let v: Value = redis::cmd("SET")
                        .arg(format!("evt_{k}"))
                        .arg(t)
                        .arg("NX")
                        .arg("EX")
                        .arg(3600)
                        .query(&mut c)
                        .unwrap();
                    if v == Value::Okay {
                        *firsts.lock().unwrap().entry(k).or_default() += 1;
                    }
                }
            });
        }
    });
    let firsts = firsts.lock().unwrap();
    assert!(firsts.values().all(|&n| n == 1), "a key was new twice");
    let mut c = server.connect();
    assert_eq!(int(&ok(&mut c, &["DBSIZE"])), firsts.len() as i64);
    // Whoever won a key is who GET names.
    for &k in firsts.keys().take(50) {
        let Value::BulkString(_) = ok(&mut c, &["GET", &format!("evt_{k}")]) else {
            panic!("evt_{k} has no value")
        };
    }
}

#[test]
fn leases_fence_across_connections() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let (mut a, mut b) = (server.connect(), server.connect());
    let Value::Array(begun) = ok(&mut a, &["ONCE.BEGIN", "job", "300", "FP", "payload-1"]) else {
        panic!("ONCE.BEGIN answers an array")
    };
    assert_eq!(begun[0], bulk(b"acquired"));
    let Value::BulkString(ticket_a) = &begun[1] else {
        panic!("a ticket")
    };
    let ticket_a = String::from_utf8(ticket_a.clone()).unwrap();
    assert_eq!(begun[2], Value::Int(1));
    let Value::Array(busy) = ok(&mut b, &["ONCE.BEGIN", "job", "300", "FP", "payload-1"]) else {
        panic!("an array")
    };
    assert_eq!(busy[0], bulk(b"in-flight"));
    let Value::Array(other) = ok(&mut b, &["ONCE.BEGIN", "job", "300", "FP", "payload-2"]) else {
        panic!("an array")
    };
    assert_eq!(other[0], bulk(b"mismatch"));
    assert!(err(&mut b, &["ONCE.COMPLETE", "job", "1.00.0.0", "x", "1000"]).contains("ticket"));
    assert!(err(&mut b, &["ONCE.EXTEND", "job", &ticket_a, "0"]).contains("milliseconds"));
    let Value::Array(state) = ok(&mut b, &["ONCE.GET", "job"]) else {
        panic!("an array")
    };
    assert_eq!(state[0], bulk(b"in-flight"));

    // A's lease runs out; B takes over as attempt 2; A is fenced off.
    let deadline = Instant::now() + Duration::from_secs(20);
    let ticket_b = loop {
        let Value::Array(r) = ok(&mut b, &["ONCE.BEGIN", "job", "60000", "FP", "payload-1"]) else {
            panic!("an array")
        };
        if r[0] == bulk(b"acquired") {
            assert_eq!(r[2], Value::Int(2));
            let Value::BulkString(t) = &r[1] else {
                panic!("a ticket")
            };
            break String::from_utf8(t.clone()).unwrap();
        }
        assert!(Instant::now() < deadline, "the lease never ran out");
        std::thread::yield_now();
    };
    let e = err(
        &mut a,
        &["ONCE.COMPLETE", "job", &ticket_a, "late", "60000"],
    );
    assert!(e.starts_with("STALE"), "{e}");
    assert!(err(&mut a, &["ONCE.EXTEND", "job", &ticket_a, "1000"]).starts_with("STALE"));
    assert_eq!(
        ok(&mut b, &["ONCE.EXTEND", "job", &ticket_b, "60000"]),
        Value::Okay
    );
    assert_eq!(
        ok(
            &mut b,
            &["ONCE.COMPLETE", "job", &ticket_b, "shipped", "60000"]
        ),
        Value::Okay
    );
    let Value::Array(done) = ok(&mut a, &["ONCE.BEGIN", "job", "300", "FP", "payload-1"]) else {
        panic!("an array")
    };
    assert_eq!(done, vec![bulk(b"done"), bulk(b"shipped"), Value::Int(2)]);
    let Value::Array(state) = ok(&mut a, &["ONCE.GET", "job"]) else {
        panic!("an array")
    };
    assert_eq!(state[0], bulk(b"completed"));
    assert_eq!(state[4], bulk(b"shipped"));
    assert_eq!(ok(&mut a, &["GET", "job"]), bulk(b"shipped"));
    assert_eq!(ok(&mut a, &["ONCE.GET", "nothing"]), Value::Nil);

    // Abandon frees the key for the next attempt.
    let Value::Array(r) = ok(&mut a, &["ONCE.BEGIN", "job2", "60000"]) else {
        panic!("an array")
    };
    let Value::BulkString(t) = &r[1] else {
        panic!("a ticket")
    };
    let t = String::from_utf8(t.clone()).unwrap();
    assert_eq!(ok(&mut a, &["ONCE.ABANDON", "job2", &t]), Value::Okay);
    assert!(err(&mut a, &["ONCE.ABANDON", "job2", &t]).starts_with("STALE"));
    let Value::Array(r) = ok(&mut b, &["ONCE.BEGIN", "job2", "60000"]) else {
        panic!("an array")
    };
    assert_eq!((&r[0], &r[2]), (&bulk(b"acquired"), &Value::Int(2)));
}

#[test]
fn a_password_is_required_when_set() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--requirepass", "s3cret"]);
    let mut c = server.connect();
    assert!(err(&mut c, &["GET", "k"]).contains("NOAUTH"));
    assert!(err(&mut c, &["SET", "k", "v", "NX", "EX", "9"]).contains("NOAUTH"));
    assert!(err(&mut c, &["AUTH", "wrong"]).contains("WRONGPASS"));
    assert!(err(&mut c, &["AUTH", "someone", "s3cret"]).contains("WRONGPASS"));
    assert!(err(&mut c, &["HELLO", "3"]).contains("NOAUTH"));
    assert_eq!(ok(&mut c, &["AUTH", "s3cret"]), Value::Okay);
    assert_eq!(ok(&mut c, &["SET", "k", "v", "NX", "EX", "9"]), Value::Okay);
    // A client that authenticates itself from the URL, as applications do.
    let url = format!("redis://:s3cret@{}/", server.addr);
    let mut d = redis::Client::open(url).unwrap().get_connection().unwrap();
    assert_eq!(ok(&mut d, &["GET", "k"]), bulk(b"v"));
    let url = format!("redis://default:s3cret@{}/?protocol=resp3", server.addr);
    let mut e = redis::Client::open(url).unwrap().get_connection().unwrap();
    assert_eq!(ok(&mut e, &["GET", "k"]), bulk(b"v"));
    assert_eq!(ok(&mut e, &["GET", "absent"]), Value::Nil);
}

#[test]
fn before_auth_a_client_may_send_only_small_requests() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--requirepass", "s3cret"]);
    // Redis's limits for a client without the password: 10 arguments of 16 KiB at most.
    let mut eleven = b"*11\r\n".to_vec();
    for _ in 0..11 {
        eleven.extend_from_slice(b"$1\r\nx\r\n");
    }
    let announced = b"*2\r\n$4\r\nECHO\r\n$20000\r\n".to_vec();
    for (bad, want) in [
        (
            &eleven,
            "-ERR Protocol error: unauthenticated multibulk length\r\n",
        ),
        (
            &announced,
            "-ERR Protocol error: unauthenticated bulk length\r\n",
        ),
        // Malformed for anyone: said as it is.
        (
            &b"*x\r\n".to_vec(),
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
    ] {
        let mut s = server.raw();
        s.write_all(bad).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got)
            .expect("the server closes the connection");
        assert_eq!(String::from_utf8_lossy(&got), want);
    }
    // Sent with its `AUTH` in one write, a large request is read once `AUTH` has run.
    let mut s = server.raw();
    let value = "v".repeat(20_000);
    let mut sent = b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n".to_vec();
    sent.extend_from_slice(
        format!("*2\r\n$4\r\nECHO\r\n${}\r\n{value}\r\n", value.len()).as_bytes(),
    );
    s.write_all(&sent).unwrap();
    let text = read_until(&mut s, format!("{value}\r\n").as_bytes());
    assert_eq!(text, format!("+OK\r\n${}\r\n{value}\r\n", value.len()));
}

#[test]
fn options_numbers_and_keys_are_checked_as_redis_checks_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--requirepass", "s3cret"]);
    let mut c = server.connect();
    // HELLO reads all its options before it authenticates: a bad one leaves the client
    // without the password.
    let e = err(
        &mut c,
        &["HELLO", "3", "AUTH", "default", "s3cret", "BOGUS"],
    );
    assert!(e.contains("Syntax error in HELLO option 'BOGUS'"), "{e}");
    assert!(err(&mut c, &["GET", "k"]).contains("NOAUTH"));
    // MULTI needs the password like any command, and leaves no state behind.
    assert!(err(&mut c, &["MULTI"]).contains("NOAUTH"));
    assert_eq!(ok(&mut c, &["AUTH", "s3cret"]), Value::Okay);
    assert_eq!(
        ok(&mut c, &["SET", "good", "v", "NX", "EX", "100"]),
        Value::Okay
    );
    // Numbers as Redis reads them, and every option read before any value is checked.
    assert!(err(&mut c, &["SELECT", "-0"]).contains("not an integer"));
    assert!(err(&mut c, &["SELECT", "1"]).contains("out of range"));
    assert!(err(&mut c, &["SET", "k", "v", "NX", "EX", "0", "BOGUS"]).contains("syntax error"));
    assert!(err(&mut c, &["SET", "k", "v", "NX", "EX", "-01"]).contains("not an integer"));
    assert!(err(&mut c, &["SET", "k", "v", "NX", "EX", "0"]).contains("invalid expire time"));
    assert!(err(&mut c, &["SET", "k", "v", "XX", "EX", "5"]).contains("supports only"));
    assert!(err(&mut c, &["SET", "k", "v", "XX", "EX", "x", "?"]).contains("syntax error"));
    assert_eq!(int(&ok(&mut c, &["DBSIZE"])), 1);
    // A key the store cannot hold is not there: reads and removals answer as Redis does
    // for a missing key, and the keys it can hold are served.
    let long = "k".repeat(oncelog::MAX_KEY_LEN + 1);
    assert_eq!(ok(&mut c, &["GET", ""]), Value::Nil);
    assert_eq!(ok(&mut c, &["ONCE.GET", &long]), Value::Nil);
    assert_eq!(int(&ok(&mut c, &["TTL", ""])), -2);
    assert_eq!(int(&ok(&mut c, &["PTTL", &long])), -2);
    assert_eq!(int(&ok(&mut c, &["EXISTS", "good", "", &long, "good"])), 2);
    assert_eq!(int(&ok(&mut c, &["DEL", "", "good", &long])), 1);
    assert_eq!(ok(&mut c, &["GET", "good"]), Value::Nil);
    // Thousands of keys in one command.
    let many: Vec<String> = (0..5000).map(|i| format!("many-{i}")).collect();
    for k in &many[..3] {
        assert_eq!(ok(&mut c, &["SET", k, "v", "NX", "EX", "100"]), Value::Okay);
    }
    let mut del = vec!["DEL"];
    del.extend(many.iter().map(String::as_str));
    assert_eq!(int(&ok(&mut c, &del)), 3);
    assert_eq!(int(&ok(&mut c, &["DBSIZE"])), 0);
    // An array of a negative count is a request to ignore, as in Redis.
    let mut s = server.raw();
    s.write_all(b"AUTH s3cret\r\n*-10\r\nPING\r\n").unwrap();
    assert_eq!(read_until(&mut s, b"+PONG\r\n"), "+OK\r\n+PONG\r\n");
}

#[test]
fn edge_cases_get_redis_s_exact_replies_and_quit_ends_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut s = server.raw();
    s.write_all(
        b"INFO keyspace\r\nPING a b\r\nECHO\r\nSELECT abc\r\nHELLO 4\r\nHELLO abc\r\n\
          CONFIG GET\r\nCLIENT SETINFO lib-name x\r\nCLIENT SETINFO bogus x\r\n\
          SET a 1 NX EX 100\r\nDEL a a\r\nEXISTS a a\r\nAUTH x\r\nQUIT\r\nPING\r\n",
    )
    .unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got)
        .expect("QUIT closes the connection");
    let want = [
        // An empty store has no keyspace line.
        "$12",
        "# Keyspace",
        "",
        "-ERR wrong number of arguments for 'ping' command",
        "-ERR wrong number of arguments for 'echo' command",
        "-ERR value is not an integer or out of range",
        "-NOPROTO unsupported protocol version",
        "-ERR Protocol version is not an integer or out of range",
        "-ERR wrong number of arguments for 'config|get' command",
        "+OK",
        "-ERR Unrecognized option 'bogus'",
        "+OK",
        ":1",
        ":0",
        "-ERR AUTH <password> called without any password configured for the default \
         user. Are you sure your configuration is correct?",
        // QUIT's answer, and nothing after it: the last PING is not run.
        "+OK",
        "",
    ];
    assert_eq!(got, want.join("\r\n"));
}

/// Stores the largest value under `big` and returns 300 `GET big` with their replies:
/// about 5 MB that fill the socket buffers while a client does not read.
fn big_replies(server: &Server) -> (Vec<u8>, Vec<u8>) {
    let mut c = server.connect();
    let value = "v".repeat(oncelog::MAX_OUTCOME_LEN);
    assert_eq!(
        ok(&mut c, &["SET", "big", &value, "NX", "EX", "100"]),
        Value::Okay
    );
    let (mut sent, mut expected) = (Vec::new(), Vec::new());
    for _ in 0..300 {
        sent.extend_from_slice(b"GET big\r\n");
        expected.extend_from_slice(format!("${}\r\n{value}\r\n", value.len()).as_bytes());
    }
    (sent, expected)
}

/// Sends `sent` whole before reading any reply, as a client library sends a pipeline, then
/// reads the replies and checks them against `expected`. `stuck` says what a send that
/// does not finish in 30 s means.
fn send_before_reading(server: &Server, sent: Vec<u8>, expected: &[u8], stuck: &str) {
    let mut s = server.raw();
    let mut writer = s.try_clone().unwrap();
    let (done, wrote) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(writer.write_all(&sent).is_ok());
    });
    match wrote.recv_timeout(Duration::from_secs(30)) {
        Ok(true) => {}
        Ok(false) => panic!("the server closed the connection"),
        Err(_) => panic!("the pipeline was not sent in 30 s: {stuck}"),
    }
    let mut got = vec![0u8; expected.len()];
    s.read_exact(&mut got).expect("every reply");
    assert!(got == expected, "the replies differ from what was sent");
}

#[test]
fn a_client_that_sends_a_long_pipeline_before_reading_gets_every_reply() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    // Replies that fill the socket buffers, then 10 MB more of requests, as a client
    // library sends a whole pipeline before it reads (redis-py's and Jedis's do).
    let (mut sent, mut expected) = big_replies(&server);
    let payload = "e".repeat(64 << 10);
    for _ in 0..160 {
        let echo = format!("*2\r\n$4\r\nECHO\r\n${}\r\n{payload}\r\n", payload.len());
        sent.extend_from_slice(echo.as_bytes());
        expected.extend_from_slice(format!("${}\r\n{payload}\r\n", payload.len()).as_bytes());
    }
    let stuck = "the server stopped reading while its replies waited for the client to read";
    send_before_reading(&server, sent, &expected, stuck);
}

#[test]
fn a_pipeline_larger_than_the_input_limit_is_served_while_its_replies_wait() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    // Replies that fill the socket buffers, then 60 MB of requests with small replies:
    // more than the input limit (16 MiB) and the socket buffers together, so the server
    // must run requests while earlier replies wait, as Redis does.
    let (mut sent, mut expected) = big_replies(&server);
    let absent = "k".repeat(4000);
    let exists = format!("*2\r\n$6\r\nEXISTS\r\n${}\r\n{absent}\r\n", absent.len());
    for _ in 0..15_000 {
        sent.extend_from_slice(exists.as_bytes());
        expected.extend_from_slice(b":0\r\n");
    }
    let stuck = "the server stopped running requests while replies waited for the client";
    send_before_reading(&server, sent, &expected, stuck);
}

#[test]
fn a_client_still_sending_when_the_server_ends_it_gets_the_last_reply() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    // One request of 20 arguments of 1 MiB: over the 16 MiB input limit before it is whole.
    let mut request = b"*20\r\n".to_vec();
    let arg = vec![b'a'; 1 << 20];
    for _ in 0..20 {
        request.extend_from_slice(b"$1048576\r\n");
        request.extend_from_slice(&arg);
        request.extend_from_slice(b"\r\n");
    }
    let mut s = server.raw();
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        // The server may have stopped reading by the end: a failed write is expected.
        let _ = writer.write_all(&request);
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    let mut got = String::new();
    s.read_to_string(&mut got)
        .expect("the error, then the end of the connection (not a reset)");
    assert_eq!(
        got,
        "-ERR Protocol error: client query buffer limit reached\r\n"
    );
    sender.join().unwrap();
}

#[test]
fn malformed_frames_and_limits_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-clients", "3"]);
    for bad in [
        &b"*1\r\n$x\r\n"[..],
        b"*1\r\n$99999999\r\n",
        b"*100000\r\n",
        b"*1\r\n:5\r\n",
        b"*2\r\n$3\r\nGET\r\n$1\r\nkXX",
    ] {
        let mut s = server.raw();
        s.write_all(b"PING\r\n").unwrap();
        s.write_all(bad).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got)
            .expect("the server closes the connection");
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.starts_with("+PONG\r\n-ERR Protocol error"),
            "{:?}: {got:?}",
            String::from_utf8_lossy(bad)
        );
    }
    // A deep pipeline is answered whole, in order, across batches.
    let mut s = server.raw();
    let n = 5000;
    let mut sent = Vec::new();
    for i in 0..n {
        sent.extend_from_slice(format!("ECHO {i}\r\n").as_bytes());
    }
    s.write_all(&sent).unwrap();
    let text = read_until(&mut s, format!("{}\r\n", n - 1).as_bytes());
    let echoed: Vec<&str> = text.split("\r\n").filter(|l| !l.starts_with('$')).collect();
    assert_eq!(echoed.len(), n + 1);
    assert!(echoed
        .iter()
        .take(n)
        .enumerate()
        .all(|(i, l)| *l == i.to_string()));

    // --max-clients 3: three held connections, the fourth is refused. The connections the
    // server closed above free their places once it has seen them go, which may take a
    // moment: until then a connection is refused, and is tried again.
    let deadline = Instant::now() + Duration::from_secs(20);
    let held: Vec<Connection> = (0..2)
        .map(|_| loop {
            match redis::Client::open(server.url()).unwrap().get_connection() {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "no room: {e}");
                    std::thread::yield_now();
                }
            }
        })
        .collect();
    let mut fourth = server.raw();
    let mut got = String::new();
    fourth.read_to_string(&mut got).unwrap();
    assert_eq!(got, "-ERR max number of clients reached\r\n");
    drop(held);
    drop(s);
    // Once they leave, there is room again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut c = server.raw();
        c.write_all(b"PING\r\n").unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).unwrap();
        if &buf[..n] == b"+PONG\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "no room after clients left");
        std::thread::yield_now();
    }
}

/// Keys that clients saw acknowledged, with the value each wrote.
fn claim_until(
    server: &Server,
    prefix: &str,
    threads: usize,
    stop_after: usize,
) -> Vec<(String, String)> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|s| {
        for t in 0..threads {
            let acked = Arc::clone(&acked);
            s.spawn(move || {
                let Ok(mut c) = redis::Client::open(server.url()).unwrap().get_connection() else {
                    return;
                };
                // Odd threads pipeline their SETs eight at a time (one grouped batch in
                // the store); a pipeline counts only if its replies all came back.
                let depth = if t % 2 == 1 { 8 } else { 1 };
                for i in 0.. {
                    let sets: Vec<(String, String)> = (0..depth)
                        .map(|j| (format!("{prefix}t{t}-{i}-{j}"), format!("v{i}-{j}")))
                        .collect();
                    let mut pipe = redis::pipe();
                    for (k, v) in &sets {
                        pipe.cmd("SET").arg(k).arg(v).arg("NX").arg("EX").arg(3600);
                    }
                    let r: redis::RedisResult<Vec<Value>> = pipe.query(&mut c);
                    match r {
                        Ok(replies) => {
                            assert_eq!(replies.len(), sets.len());
                            for (reply, (k, v)) in replies.into_iter().zip(sets) {
                                assert_eq!(reply, Value::Okay, "{k}");
                                acked.lock().unwrap().push((k, v));
                            }
                        }
                        Err(_) => return,
                    }
                    if acked.lock().unwrap().len() >= stop_after {
                        return;
                    }
                }
            });
        }
    });
    Arc::try_unwrap(acked).unwrap().into_inner().unwrap()
}

fn assert_kept(dir: &Path, acked: &[(String, String)]) {
    let store = oncelog::Store::open(dir).unwrap();
    for (k, v) in acked {
        let seen = store.get(k).unwrap().unwrap_or_else(|| panic!("{k} lost"));
        assert_eq!(seen.outcome.as_deref(), Some(v.as_bytes()), "{k}");
    }
}

#[test]
fn sigterm_finishes_what_is_in_flight_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let acked = claim_until(&server, "", 8, 2000);
    // A pipeline in flight when the signal comes: every reply it gets is kept.
    let mut s = server.raw();
    let mut sent = Vec::new();
    for i in 0..1000 {
        sent.extend_from_slice(format!("SET late{i} v NX EX 3600\r\n").as_bytes());
    }
    s.write_all(&sent).unwrap();
    server.signal("-TERM");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let answered = String::from_utf8_lossy(&got).matches("+OK\r\n").count();
    let (status, stderr) = server.wait();
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(stderr.contains("stopped"), "{stderr}");
    assert_kept(dir.path(), &acked);
    let late: Vec<(String, String)> = (0..answered)
        .map(|i| (format!("late{i}"), "v".to_string()))
        .collect();
    assert_kept(dir.path(), &late);
}

#[test]
fn kill_9_loses_nothing_that_was_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let server = Server::start(dir.path(), &[]);
        let acked = Arc::new(Mutex::new(Vec::new()));
        std::thread::scope(|s| {
            let a = Arc::clone(&acked);
            let server = &server;
            s.spawn(move || {
                let got = claim_until(server, &format!("r{round}"), 16, usize::MAX);
                a.lock().unwrap().extend(got);
            });
            // Kill once some claims are acknowledged, while the rest are in flight.
            let mut c = server.connect();
            let deadline = Instant::now() + Duration::from_secs(60);
            while int(&ok(&mut c, &["DBSIZE"])) < 500 * (round + 1) {
                assert!(Instant::now() < deadline, "claims do not progress");
                std::thread::yield_now();
            }
            server.signal("-KILL");
        });
        drop(server);
        let acked = acked.lock().unwrap();
        assert!(!acked.is_empty());
        assert_kept(dir.path(), &acked);
    }
}

#[test]
fn pipelined_reads_of_the_whole_store_see_the_writes_sent_before_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut s = server.raw();
    s.write_all(
        b"SET a v NX EX 100\r\nSET b v NX EX 100\r\nDBSIZE\r\nINFO keyspace\r\n\
          DEL a b\r\nDBSIZE\r\nPING\r\n",
    )
    .unwrap();
    let text = read_until(&mut s, b"+PONG\r\n");
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(&lines[..3], ["+OK", "+OK", ":2"], "{text}");
    assert!(text.contains("db0:keys=2,"), "{text}");
    assert!(text.ends_with(":2\r\n:0\r\n+PONG\r\n"), "{text}");
}

#[test]
fn a_refused_command_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.connect();
    assert_eq!(
        ok(&mut c, &["SET", "good", "v", "NX", "EX", "100"]),
        Value::Okay
    );
    // A key the store cannot hold, in a write: an error, and nothing written.
    let long = "k".repeat(oncelog::MAX_KEY_LEN + 1);
    assert!(err(&mut c, &["SET", &long, "v", "NX", "EX", "100"]).contains("invalid key"));
    assert!(err(&mut c, &["ONCE.BEGIN", "", "1000"]).contains("invalid key"));
    assert_eq!(int(&ok(&mut c, &["DBSIZE"])), 1);
    assert_eq!(ok(&mut c, &["GET", "good"]), bulk(b"v"));
    // MULTI/EXEC: nothing between them runs, and EXEC says so.
    let r: redis::RedisResult<Vec<Value>> = redis::pipe()
        .atomic()
        .cmd("SET")
        .arg("in-multi")
        .arg("v")
        .arg("NX")
        .arg("EX")
        .arg(100)
        .query(&mut c);
    assert!(r.is_err(), "{r:?}");
    assert_eq!(ok(&mut c, &["GET", "in-multi"]), Value::Nil);
    let mut s = server.raw();
    s.write_all(b"MULTI\r\nSET m v NX EX 100\r\nEXEC\r\nEXEC\r\nDISCARD\r\nGET m\r\n")
        .unwrap();
    let text = read_until(&mut s, b"$-1\r\n");
    let codes: Vec<&str> = text
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        codes,
        ["-ERR", "-ERR", "-EXECABORT", "-ERR", "-ERR", "$-1"],
        "{text}"
    );
    // An unknown command's error quotes its arguments shortened.
    let e = err(&mut c, &["NOSUCH", &"x".repeat(10_000)]);
    assert!(e.len() < 400, "{} bytes", e.len());
}

#[test]
fn big_replies_to_a_deep_pipeline_come_back_whole_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let mut c = server.connect();
    let value = "v".repeat(oncelog::MAX_OUTCOME_LEN);
    assert_eq!(
        ok(&mut c, &["SET", "big", &value, "NX", "EX", "100"]),
        Value::Okay
    );
    let mut pipe = redis::pipe();
    for i in 0..300 {
        pipe.cmd("GET").arg("big");
        pipe.cmd("ECHO").arg(i);
    }
    let replies: Vec<Value> = pipe.query(&mut c).unwrap();
    for (i, pair) in replies.chunks(2).enumerate() {
        assert_eq!(pair[0], bulk(value.as_bytes()));
        assert_eq!(pair[1], bulk(i.to_string().as_bytes()));
    }
}

#[test]
fn auth_follows_redis_with_and_without_a_password() {
    let dir = tempfile::tempdir().unwrap();
    // No password: the default user takes any, as in Redis.
    let server = Server::start(dir.path(), &["--requirepass", ""]);
    let mut c = server.connect();
    assert_eq!(ok(&mut c, &["GET", "k"]), Value::Nil);
    assert_eq!(ok(&mut c, &["AUTH", "default", "anything"]), Value::Okay);
    assert!(err(&mut c, &["AUTH", "someone", "anything"]).contains("WRONGPASS"));
    assert!(err(&mut c, &["HELLO", "3", "SETNAME", "a b"]).contains("Client names"));
    let Value::Map(_) = ok(
        &mut c,
        &["HELLO", "3", "AUTH", "default", "x", "SETNAME", "w"],
    ) else {
        panic!("HELLO 3 answers a map")
    };
    assert_eq!(ok(&mut c, &["CLIENT", "GETNAME"]), bulk(b"w"));
    let Value::Map(config) = ok(&mut c, &["CONFIG", "GET", "save", "appendfsync"]) else {
        panic!("CONFIG GET answers a map in RESP3")
    };
    assert_eq!(config.len(), 2, "{config:?}");
}

#[test]
fn a_second_signal_ends_a_drain_held_up_by_a_client_that_does_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--drain-timeout", "1h"]);
    let mut c = server.connect();
    let value = "v".repeat(oncelog::MAX_OUTCOME_LEN);
    assert_eq!(
        ok(&mut c, &["SET", "big", &value, "NX", "EX", "100"]),
        Value::Okay
    );
    // Megabytes of replies that are never read: the server blocks writing them.
    let mut stuck = server.raw();
    let mut sent = Vec::new();
    for _ in 0..2000 {
        sent.extend_from_slice(b"GET big\r\n");
    }
    stuck.write_all(&sent).unwrap();
    let mut probe = server.connect();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Once the server has answered the writes, it is busy with the stuck client.
    assert_eq!(
        ok(&mut probe, &["PING"]),
        Value::SimpleString("PONG".into())
    );
    // SIGTERM, then again (as an operator would) until it exits: signals sent at once
    // may be delivered as one.
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "a second signal did not end the drain"
        );
        server.signal("-TERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    drop(stuck);
    assert_kept(dir.path(), &[("big".to_string(), value)]);
}
