//! The Redis protocol (RESP): reading client requests, writing replies in RESP2 or RESP3.
//!
//! A request is what every Redis client sends, an array of bulk strings
//! (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`), or an inline command, one line of words separated
//! by spaces (`PING\r\n`, as typed into `nc`). [`parse`] reads one request from the front of
//! a buffer, or says that more bytes are needed, or that the bytes are not RESP.
//!
//! The invariants the parser keeps, whatever the input:
//! - it never panics and never reads past the buffer;
//! - it allocates only the argument list, at most [`Limits::max_args`] ranges, and only
//!   once the request is complete: a client cannot make it reserve memory by announcing a
//!   large array or bulk string (the caller bounds the bytes it buffers);
//! - it answers `Incomplete` only for a prefix of a request that could still be valid
//!   within the limits, so a caller that buffers up to a limit and then gives up cannot be
//!   held forever by a client that trickles garbage.
//!
//! `fuzz/fuzz_targets/resp_parse.rs` checks the first two against arbitrary bytes and the
//! third against a request split at every point.

use std::fmt;
use std::ops::Range;

/// Bounds on what one request may announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Arguments in one request, the command name included.
    pub max_args: usize,
    /// Bytes of one argument.
    pub max_bulk: usize,
    /// Bytes of an inline command's line.
    pub max_inline: usize,
}

impl Default for Limits {
    /// 65,536 arguments (a `DEL` of tens of thousands of keys), 1 MiB per argument (more
    /// than any key or outcome the store takes, so that those get a clear error instead),
    /// 64 KiB lines.
    fn default() -> Limits {
        Limits {
            max_args: 1 << 16,
            max_bulk: 1 << 20,
            max_inline: 64 << 10,
        }
    }
}

/// One request: its arguments as ranges into the buffer given to [`parse`], and how many
/// bytes it took from the front of that buffer. An empty `args` is a request to ignore
/// (`*0\r\n`, a blank line), as Redis ignores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub args: Vec<Range<usize>>,
    pub len: usize,
}

/// Why the bytes are not a request. The connection cannot be read further: the server
/// answers `-ERR Protocol error: ...` and closes it, as Redis does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// `*N` with N not a number or above `max_args`.
    ArrayLength,
    /// `$N` with N not a number or above `max_bulk`.
    BulkLength,
    /// An array element that is not a bulk string.
    ExpectedBulk(u8),
    /// A bulk string not followed by `\r\n`.
    BulkEnd,
    /// An inline line longer than `max_inline`, or with more words than `max_args`.
    InlineTooBig,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::ArrayLength => write!(f, "Protocol error: invalid multibulk length"),
            ProtocolError::BulkLength => write!(f, "Protocol error: invalid bulk length"),
            ProtocolError::ExpectedBulk(b) if b.is_ascii_graphic() => {
                write!(f, "Protocol error: expected '$', got '{}'", *b as char)
            }
            ProtocolError::ExpectedBulk(b) => {
                write!(f, "Protocol error: expected '$', got byte {b:#04x}")
            }
            ProtocolError::BulkEnd => write!(f, "Protocol error: bulk string not ended by CRLF"),
            ProtocolError::InlineTooBig => write!(f, "Protocol error: too big inline request"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Reads one request from the front of `buf`: `Ok(Some(request))`, `Ok(None)` if `buf`
/// holds only the start of one, or the reason it is not RESP.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<Request>, ProtocolError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_array(buf, limits),
        Some(_) => parse_inline(buf, limits),
    }
}

/// Digits a length may have: enough for any limit a server sets.
const MAX_DIGITS: usize = 19;

/// A `*N` or `$N` line at `buf[at..]` (the type byte already checked): the number and where
/// the next line starts; `Ok(None)` if the line is not complete yet. A negative number is
/// -1 only; anything else that is not `-1` or digits is `bad`.
fn number_line(
    buf: &[u8],
    at: usize,
    bad: ProtocolError,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let start = at + 1;
    let rest = buf.get(start..).unwrap_or_default();
    let Some(cr) = rest.iter().position(|&b| b == b'\r') else {
        // No end yet: incomplete while it can still be a number.
        let plausible = rest.len() <= MAX_DIGITS + 1
            && rest
                .iter()
                .enumerate()
                .all(|(i, &b)| b.is_ascii_digit() || (i == 0 && b == b'-'));
        return if plausible { Ok(None) } else { Err(bad) };
    };
    let text = &rest[..cr];
    match rest.get(cr + 1) {
        None => {}
        Some(b'\n') => {}
        Some(_) => return Err(bad),
    }
    let (negative, digits) = match text.strip_prefix(b"-") {
        // As Redis reads numbers: no `-0`, no `-` alone.
        Some(d) if d.first().is_some_and(|&b| b != b'0') => (true, d),
        Some(_) => return Err(bad),
        None => (false, text),
    };
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad);
    }
    let magnitude = digits
        .iter()
        .try_fold(0i64, |n, &d| {
            n.checked_mul(10)?.checked_add(i64::from(d - b'0'))
        })
        .ok_or(bad)?;
    let value = if negative { -magnitude } else { magnitude };
    if rest.len() < cr + 2 {
        return Ok(None);
    }
    Ok(Some((value, start + cr + 2)))
}

fn parse_array(buf: &[u8], limits: &Limits) -> Result<Option<Request>, ProtocolError> {
    let Some((count, mut at)) = number_line(buf, 0, ProtocolError::ArrayLength)? else {
        return Ok(None);
    };
    if count <= 0 {
        return Ok(Some(Request {
            args: Vec::new(),
            len: at,
        }));
    }
    let count = usize::try_from(count).map_err(|_| ProtocolError::ArrayLength)?;
    if count > limits.max_args {
        return Err(ProtocolError::ArrayLength);
    }
    // First walk without allocating: a request is built only once it is all here.
    let mut spans = 0usize;
    let first = at;
    for _ in 0..count {
        match buf.get(at) {
            None => return Ok(None),
            Some(b'$') => {}
            Some(&other) => return Err(ProtocolError::ExpectedBulk(other)),
        }
        let Some((len, data)) = number_line(buf, at, ProtocolError::BulkLength)? else {
            return Ok(None);
        };
        let len = usize::try_from(len).map_err(|_| ProtocolError::BulkLength)?;
        if len > limits.max_bulk {
            return Err(ProtocolError::BulkLength);
        }
        let end = data + len;
        match (buf.get(end), buf.get(end + 1)) {
            (Some(b'\r'), Some(b'\n')) => {}
            (None, _) | (Some(b'\r'), None) => return Ok(None),
            _ => return Err(ProtocolError::BulkEnd),
        }
        at = end + 2;
        spans += 1;
    }
    let mut args = Vec::with_capacity(spans);
    let mut at = first;
    for _ in 0..spans {
        // Known to be well formed: the walk above checked every line.
        let (len, data) = match number_line(buf, at, ProtocolError::BulkLength) {
            Ok(Some((len, data))) => (len as usize, data),
            _ => return Err(ProtocolError::BulkLength),
        };
        args.push(data..data + len);
        at = data + len + 2;
    }
    Ok(Some(Request { args, len: at }))
}

fn parse_inline(buf: &[u8], limits: &Limits) -> Result<Option<Request>, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > limits.max_inline {
            Err(ProtocolError::InlineTooBig)
        } else {
            Ok(None)
        };
    };
    if nl > limits.max_inline {
        return Err(ProtocolError::InlineTooBig);
    }
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let mut args = Vec::new();
    let mut i = 0;
    while i < line_end {
        while i < line_end && matches!(buf[i], b' ' | b'\t') {
            i += 1;
        }
        let start = i;
        while i < line_end && !matches!(buf[i], b' ' | b'\t') {
            i += 1;
        }
        if i > start {
            if args.len() == limits.max_args {
                return Err(ProtocolError::InlineTooBig);
            }
            args.push(start..i);
        }
    }
    Ok(Some(Request { args, len: nl + 1 }))
}

/// A reply, written in the protocol version the connection chose ([`Reply::write`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+text`.
    Simple(&'static str),
    /// `-text` (the text starts with the error code, `ERR`, `NOAUTH`, ...).
    Error(String),
    /// `:n`.
    Int(i64),
    /// `$len` and the bytes.
    Bulk(Vec<u8>),
    /// Text meant to be shown as it is (`INFO`'s): a verbatim string `=len` with the
    /// format `txt` in RESP3, a bulk string in RESP2.
    Verbatim(String),
    /// The null reply: `$-1` in RESP2, `_` in RESP3.
    Nil,
    /// `*n` and the elements.
    Array(Vec<Reply>),
    /// A map: `%n` in RESP3; in RESP2 an array of keys and values in turn.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// `+OK`.
    pub const OK: Reply = Reply::Simple("OK");

    /// An error reply with the code `ERR`.
    pub fn err(text: impl fmt::Display) -> Reply {
        Reply::Error(format!("ERR {text}"))
    }

    /// A bulk string of text.
    pub fn text(text: impl Into<String>) -> Reply {
        Reply::Bulk(text.into().into_bytes())
    }

    /// Appends the reply to `out`, in RESP3 if `resp3`, else RESP2.
    pub fn write(&self, out: &mut Vec<u8>, resp3: bool) {
        match self {
            Reply::Simple(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(s) => {
                // An error is one line: a newline in it would end the reply early.
                let clean: Vec<u8> = s
                    .bytes()
                    .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b })
                    .collect();
                line(out, b'-', &clean)
            }
            Reply::Int(n) => line(out, b':', n.to_string().as_bytes()),
            Reply::Bulk(b) => {
                line(out, b'$', b.len().to_string().as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Verbatim(text) if resp3 => {
                line(out, b'=', (text.len() + 4).to_string().as_bytes());
                out.extend_from_slice(b"txt:");
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Verbatim(text) => {
                line(out, b'$', text.len().to_string().as_bytes());
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                line(out, b'*', items.len().to_string().as_bytes());
                for item in items {
                    item.write(out, resp3);
                }
            }
            Reply::Map(pairs) => {
                if resp3 {
                    line(out, b'%', pairs.len().to_string().as_bytes());
                } else {
                    line(out, b'*', (pairs.len() * 2).to_string().as_bytes());
                }
                for (k, v) in pairs {
                    k.write(out, resp3);
                    v.write(out, resp3);
                }
            }
        }
    }
}

fn line(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.push(kind);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args<'a>(buf: &'a [u8], r: &Request) -> Vec<&'a [u8]> {
        r.args.iter().map(|a| &buf[a.clone()]).collect()
    }

    fn one(buf: &[u8]) -> Result<Option<Request>, ProtocolError> {
        parse(buf, &Limits::default())
    }

    #[test]
    fn a_multibulk_request_parses_and_says_its_length() {
        let buf = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n*1\r\n$4\r\nPING\r\n";
        let r = one(buf).unwrap().unwrap();
        assert_eq!(args(buf, &r), [&b"SET"[..], b"k", b""]);
        assert_eq!(r.len, 26);
        let r2 = one(&buf[r.len..]).unwrap().unwrap();
        assert_eq!(args(&buf[r.len..], &r2), [&b"PING"[..]]);
        assert_eq!(r.len + r2.len, buf.len());
    }

    #[test]
    fn every_prefix_of_a_request_is_incomplete() {
        let buf = b"*2\r\n$3\r\nGET\r\n$10\r\n0123456789\r\n";
        for cut in 0..buf.len() {
            assert_eq!(one(&buf[..cut]), Ok(None), "cut at {cut}");
        }
        assert!(one(buf).unwrap().is_some());
    }

    #[test]
    fn binary_bulk_strings_are_taken_whole() {
        let buf = b"*1\r\n$4\r\n\r\n\0\xff\r\n";
        let r = one(buf).unwrap().unwrap();
        assert_eq!(args(buf, &r), [&b"\r\n\0\xff"[..]]);
    }

    #[test]
    fn inline_commands_split_on_spaces() {
        let buf = b"  SET  k v\tNX \r\nPING\n";
        let r = one(buf).unwrap().unwrap();
        assert_eq!(args(buf, &r), [&b"SET"[..], b"k", b"v", b"NX"]);
        let r2 = one(&buf[r.len..]).unwrap().unwrap();
        assert_eq!(r2.len, 5);
        assert_eq!(one(b"\r\n").unwrap().unwrap().args.len(), 0);
        assert_eq!(one(b"PIN"), Ok(None));
    }

    #[test]
    fn empty_and_null_arrays_are_requests_to_ignore() {
        // As in Redis, any count of 0 or less (its own test sends `*-10`).
        for buf in [&b"*0\r\n"[..], b"*-1\r\n", b"*-10\r\n"] {
            let r = one(buf).unwrap().unwrap();
            assert!(r.args.is_empty());
            assert_eq!(r.len, buf.len());
        }
    }

    #[test]
    fn malformed_frames_are_errors_not_waits() {
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"*x\r\n", ProtocolError::ArrayLength),
            (b"*1x", ProtocolError::ArrayLength),
            (b"*-\r\n", ProtocolError::ArrayLength),
            (b"*-0\r\n", ProtocolError::ArrayLength),
            (b"*1\rx", ProtocolError::ArrayLength),
            (b"*99999999999999999999\r\n", ProtocolError::ArrayLength),
            (b"*9999999999999999999\r\n", ProtocolError::ArrayLength),
            (b"*65537\r\n", ProtocolError::ArrayLength),
            (b"*1\r\n:1\r\n", ProtocolError::ExpectedBulk(b':')),
            (b"*1\r\n$-1\r\n", ProtocolError::BulkLength),
            (b"*1\r\n$-5\r\n", ProtocolError::BulkLength),
            (b"*1\r\n$1048577\r\n", ProtocolError::BulkLength),
            (b"*1\r\n$x\r\n", ProtocolError::BulkLength),
            (b"*1\r\n$1\r\nab\r\n", ProtocolError::BulkEnd),
            (b"*1\r\n$1\r\na\rX", ProtocolError::BulkEnd),
        ];
        for (buf, want) in cases {
            assert_eq!(one(buf), Err(*want), "{:?}", String::from_utf8_lossy(buf));
        }
        let long = vec![b'a'; (64 << 10) + 1];
        assert_eq!(one(&long), Err(ProtocolError::InlineTooBig));
        let limits = Limits {
            max_args: 2,
            ..Limits::default()
        };
        assert_eq!(
            parse(b"a b c\r\n", &limits),
            Err(ProtocolError::InlineTooBig)
        );
        assert!(parse(b"a b\r\n", &limits).unwrap().is_some());
    }

    #[test]
    fn announcing_a_big_request_reserves_nothing_until_it_arrives() {
        // 1024 arguments of 1 MiB announced, none sent: incomplete, and the parser gives
        // up at the first missing byte rather than reserving room.
        assert_eq!(one(b"*1024\r\n$1048576\r\n"), Ok(None));
    }

    #[test]
    fn replies_are_written_in_either_protocol() {
        let reply = Reply::Array(vec![
            Reply::OK,
            Reply::Nil,
            Reply::Int(-2),
            Reply::Bulk(b"v".to_vec()),
            Reply::Map(vec![(Reply::text("a"), Reply::Int(1))]),
            Reply::Error("ERR bad\r\nthing".into()),
            Reply::Verbatim("# S\r\nk:v\r\n".into()),
        ]);
        let mut two = Vec::new();
        reply.write(&mut two, false);
        assert_eq!(
            two,
            b"*7\r\n+OK\r\n$-1\r\n:-2\r\n$1\r\nv\r\n*2\r\n$1\r\na\r\n:1\r\n-ERR bad  thing\r\n\
              $10\r\n# S\r\nk:v\r\n\r\n"
        );
        let mut three = Vec::new();
        reply.write(&mut three, true);
        assert_eq!(
            three,
            b"*7\r\n+OK\r\n_\r\n:-2\r\n$1\r\nv\r\n%1\r\n$1\r\na\r\n:1\r\n-ERR bad  thing\r\n\
              =14\r\ntxt:# S\r\nk:v\r\n\r\n"
        );
    }
}
