//! A minimal Redis client (RESP2 over TCP): enough for SET NX EX, pipelines, CONFIG, INFO
//! and FLUSHALL. [`Resp`] blocks; [`AsyncResp`] is its tokio twin for the `fsync-async`
//! level, where each connection keeps a window of pipelined commands in flight.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub type Res<T> = Result<T, String>;

/// Writes one command as RESP: an array of bulk strings.
fn encode(w: &mut impl Write, args: &[&[u8]]) -> io::Result<()> {
    write!(w, "*{}\r\n", args.len())?;
    for a in args {
        write!(w, "${}\r\n", a.len())?;
        w.write_all(a)?;
        w.write_all(b"\r\n")?;
    }
    Ok(())
}

fn int(bytes: &[u8]) -> Res<i64> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("redis: bad integer {:?}", String::from_utf8_lossy(bytes)))
}

/// One reply. A null bulk string or null array is `Bulk(None)` / `Array(None)`.
#[derive(Debug)]
pub enum Reply {
    Simple(String),
    Error(String),
    // Integers are only ever shown (Debug) in error messages.
    Int(#[allow(dead_code)] i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

pub struct Resp {
    r: BufReader<TcpStream>,
    w: BufWriter<TcpStream>,
}

/// How long a reply may take: under `appendfsync always` it waits for an fsync.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

fn resolve(addr: &str) -> Res<SocketAddr> {
    addr.to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .next()
        .ok_or_else(|| format!("{addr}: no address"))
}

impl Resp {
    pub fn connect(addr: &str) -> Res<Resp> {
        let sa = resolve(addr)?;
        let stream = TcpStream::connect_timeout(&sa, Duration::from_secs(2))
            .map_err(|e| format!("redis connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let w = stream.try_clone().map_err(|e| e.to_string())?;
        Ok(Resp {
            r: BufReader::with_capacity(64 * 1024, stream),
            w: BufWriter::with_capacity(64 * 1024, w),
        })
    }

    /// Queues one command (an array of bulk strings); [`flush`](Resp::flush) sends it.
    pub fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        encode(&mut self.w, args)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }

    fn line(&mut self) -> Res<Vec<u8>> {
        let mut line = Vec::with_capacity(16);
        let n = self
            .r
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("redis read: {e}"))?;
        if n == 0 {
            return Err("redis: connection closed".into());
        }
        if !line.ends_with(b"\r\n") {
            return Err("redis: malformed reply line".into());
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    /// Reads one reply.
    pub fn read(&mut self) -> Res<Reply> {
        let line = self.line()?;
        let (&kind, rest) = line.split_first().ok_or("redis: empty reply line")?;
        let text = || String::from_utf8_lossy(rest).into_owned();
        Ok(match kind {
            b'+' => Reply::Simple(text()),
            b'-' => Reply::Error(text()),
            b':' => Reply::Int(int(rest)?),
            b'$' => {
                let len = int(rest)?;
                if len < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut buf = vec![0; len as usize + 2];
                    self.r
                        .read_exact(&mut buf)
                        .map_err(|e| format!("redis read: {e}"))?;
                    buf.truncate(len as usize);
                    Reply::Bulk(Some(buf))
                }
            }
            b'*' => {
                let len = int(rest)?;
                if len < 0 {
                    Reply::Array(None)
                } else {
                    let mut items = Vec::with_capacity(len as usize);
                    for _ in 0..len {
                        items.push(self.read()?);
                    }
                    Reply::Array(Some(items))
                }
            }
            other => return Err(format!("redis: unknown reply type {:?}", other as char)),
        })
    }

    /// Sends one command and reads its reply.
    pub fn cmd(&mut self, args: &[&[u8]]) -> Res<Reply> {
        self.send(args)
            .and_then(|()| self.flush())
            .map_err(|e| format!("redis write: {e}"))?;
        self.read()
    }

    /// A command that must answer `+OK`.
    pub fn ok(&mut self, args: &[&[u8]]) -> Res<()> {
        match self.cmd(args)? {
            Reply::Simple(s) if s == "OK" => Ok(()),
            other => Err(format!(
                "redis {}: {other:?}",
                String::from_utf8_lossy(&args.join(&b' '))
            )),
        }
    }

    /// `CONFIG GET name`: the value, or `None` if the server does not know the parameter.
    pub fn config_get(&mut self, name: &str) -> Res<Option<String>> {
        match self.cmd(&[b"CONFIG", b"GET", name.as_bytes()])? {
            Reply::Array(Some(items)) => Ok(match items.get(1) {
                Some(Reply::Bulk(Some(v))) => Some(String::from_utf8_lossy(v).into_owned()),
                _ => None,
            }),
            other => Err(format!("redis CONFIG GET {name}: {other:?}")),
        }
    }

    /// `INFO section` as text.
    pub fn info(&mut self, section: &str) -> Res<String> {
        match self.cmd(&[b"INFO", section.as_bytes()])? {
            Reply::Bulk(Some(v)) => Ok(String::from_utf8_lossy(&v).into_owned()),
            other => Err(format!("redis INFO {section}: {other:?}")),
        }
    }
}

/// Parses the reply at the front of `buf`: `Ok(None)` while it is incomplete, else the
/// reply and the number of bytes it took.
fn parse(buf: &[u8]) -> Res<Option<(Reply, usize)>> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let (&kind, rest) = buf[..eol].split_first().ok_or("redis: empty reply line")?;
    let mut used = eol + 2;
    let text = || String::from_utf8_lossy(rest).into_owned();
    let reply = match kind {
        b'+' => Reply::Simple(text()),
        b'-' => Reply::Error(text()),
        b':' => Reply::Int(int(rest)?),
        b'$' => match usize::try_from(int(rest)?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                if buf.len() < used + len + 2 {
                    return Ok(None);
                }
                let data = buf[used..used + len].to_vec();
                used += len + 2;
                Reply::Bulk(Some(data))
            }
        },
        b'*' => match usize::try_from(int(rest)?) {
            Err(_) => Reply::Array(None),
            Ok(len) => {
                let mut items = Vec::with_capacity(len.min(1024));
                for _ in 0..len {
                    let Some((item, n)) = parse(&buf[used..])? else {
                        return Ok(None);
                    };
                    items.push(item);
                    used += n;
                }
                Reply::Array(Some(items))
            }
        },
        other => return Err(format!("redis: unknown reply type {:?}", other as char)),
    };
    Ok(Some((reply, used)))
}

/// One non-blocking connection for a tokio task. Commands are queued with
/// [`queue`](AsyncResp::queue) and go out in one write when [`read`](AsyncResp::read) runs
/// out of buffered replies, so a task that tops up its window after every reply sends the
/// top-ups in batches, as a pipelining client does.
pub struct AsyncResp {
    stream: tokio::net::TcpStream,
    /// Received bytes; those before `at` are parsed already.
    rbuf: Vec<u8>,
    at: usize,
    /// Queued commands, not sent yet.
    wbuf: Vec<u8>,
}

impl AsyncResp {
    /// Connects; must run inside a tokio runtime (the one that will drive the connection).
    pub async fn connect(addr: &str) -> Res<AsyncResp> {
        let sa = resolve(addr)?;
        let stream =
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(sa))
                .await
                .map_err(|_| format!("redis connect {addr}: timed out"))?
                .map_err(|e| format!("redis connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(AsyncResp {
            stream,
            rbuf: Vec::with_capacity(64 * 1024),
            at: 0,
            wbuf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Queues one command.
    pub fn queue(&mut self, args: &[&[u8]]) {
        // Writing into a Vec cannot fail.
        let _ = encode(&mut self.wbuf, args);
    }

    /// The next reply. When none is buffered, first sends the queued commands, then waits
    /// for bytes from the server.
    pub async fn read(&mut self) -> Res<Reply> {
        loop {
            if let Some((reply, n)) = parse(&self.rbuf[self.at..])? {
                self.at += n;
                return Ok(reply);
            }
            if !self.wbuf.is_empty() {
                self.stream
                    .write_all(&self.wbuf)
                    .await
                    .map_err(|e| format!("redis write: {e}"))?;
                self.wbuf.clear();
            }
            // Keep only the unparsed tail, then read more after it.
            self.rbuf.drain(..self.at);
            self.at = 0;
            self.rbuf.reserve(64 * 1024);
            let n = tokio::time::timeout(REPLY_TIMEOUT, self.stream.read_buf(&mut self.rbuf))
                .await
                .map_err(|_| format!("redis read: no reply in {} s", REPLY_TIMEOUT.as_secs()))?
                .map_err(|e| format!("redis read: {e}"))?;
            if n == 0 {
                return Err("redis: connection closed".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies_whole_or_not_at_all() {
        let wire = b"+OK\r\n$-1\r\n$3\r\nabc\r\n*2\r\n:7\r\n-ERR no\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((r, n)) = parse(&wire[at..]).unwrap() {
            got.push(format!("{r:?}"));
            at += n;
        }
        assert_eq!(at, wire.len());
        assert_eq!(
            got,
            [
                "Simple(\"OK\")",
                "Bulk(None)",
                "Bulk(Some([97, 98, 99]))",
                "Array(Some([Int(7), Error(\"ERR no\")]))",
            ]
        );
        // Every strict prefix that cuts a reply is incomplete, not an error.
        for cut in [1, 4, 7, 12, 16, 20, 26] {
            let start = [0, 5, 10, 19]
                .into_iter()
                .filter(|&s| s < cut)
                .max()
                .unwrap();
            assert!(parse(&wire[start..cut]).unwrap().is_none(), "cut at {cut}");
        }
        let mut w = Vec::new();
        encode(&mut w, &[b"SET", b"k", b"1"]).unwrap();
        assert_eq!(w, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n");
    }
}
