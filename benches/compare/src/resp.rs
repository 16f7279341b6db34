//! A minimal, blocking Redis client (RESP2 over TCP): enough for SET NX EX, pipelines,
//! CONFIG, INFO and FLUSHALL.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

pub type Res<T> = Result<T, String>;

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
        // Generous: under `appendfsync always` a reply waits for an fsync.
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(|e| e.to_string())?;
        let w = stream.try_clone().map_err(|e| e.to_string())?;
        Ok(Resp {
            r: BufReader::with_capacity(64 * 1024, stream),
            w: BufWriter::with_capacity(64 * 1024, w),
        })
    }

    /// Queues one command (an array of bulk strings); [`flush`](Resp::flush) sends it.
    pub fn send(&mut self, args: &[&[u8]]) -> io::Result<()> {
        write!(self.w, "*{}\r\n", args.len())?;
        for a in args {
            write!(self.w, "${}\r\n", a.len())?;
            self.w.write_all(a)?;
            self.w.write_all(b"\r\n")?;
        }
        Ok(())
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

    fn int(bytes: &[u8]) -> Res<i64> {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("redis: bad integer {:?}", String::from_utf8_lossy(bytes)))
    }

    /// Reads one reply.
    pub fn read(&mut self) -> Res<Reply> {
        let line = self.line()?;
        let (&kind, rest) = line.split_first().ok_or("redis: empty reply line")?;
        let text = || String::from_utf8_lossy(rest).into_owned();
        Ok(match kind {
            b'+' => Reply::Simple(text()),
            b'-' => Reply::Error(text()),
            b':' => Reply::Int(Self::int(rest)?),
            b'$' => {
                let len = Self::int(rest)?;
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
                let len = Self::int(rest)?;
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
