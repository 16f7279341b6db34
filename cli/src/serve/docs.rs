//! `COMMAND DOCS`: what each command takes, in the shape Redis 7 gives it, so that
//! redis-cli shows a hint of the arguments while a command is typed (`SET key value NX
//! EX seconds|...`) and `help <command>` prints its summary.
//!
//! redis-cli builds a hint from each argument's `name`, `type`, `token` and `flags`, and
//! takes a command's `subcommands` by names of the form `command|sub`; every argument needs
//! a `type` and every subcommand name a `|`, or redis-cli fails an assertion. The unit
//! tests below hold the table to that, and to naming every command the server answers.

use crate::resp::Reply;

/// The version of oncelog in which the commands below first appeared.
const SINCE: &str = "0.1.0";

/// One argument of a command, as `COMMAND DOCS` describes it.
#[derive(Debug)]
struct Arg {
    name: &'static str,
    /// `key`, `string`, `integer`, `unix-time`, `pure-token`, `oneof` or `block`.
    kind: &'static str,
    token: Option<&'static str>,
    optional: bool,
    multiple: bool,
    /// The choices of a `oneof`, the parts of a `block`.
    args: &'static [Arg],
}

const fn arg(name: &'static str, kind: &'static str) -> Arg {
    Arg {
        name,
        kind,
        token: None,
        optional: false,
        multiple: false,
        args: &[],
    }
}

const KEY: Arg = arg("key", "key");
const TICKET: Arg = arg("ticket", "string");

impl Arg {
    const fn token(self, token: &'static str) -> Arg {
        Arg {
            token: Some(token),
            ..self
        }
    }

    const fn optional(self) -> Arg {
        Arg {
            optional: true,
            ..self
        }
    }

    const fn multiple(self) -> Arg {
        Arg {
            multiple: true,
            ..self
        }
    }

    const fn of(self, args: &'static [Arg]) -> Arg {
        Arg { args, ..self }
    }

    fn reply(&self) -> Reply {
        let mut map = vec![
            (Reply::text("name"), Reply::text(self.name)),
            (Reply::text("type"), Reply::text(self.kind)),
        ];
        if let Some(token) = self.token {
            map.push((Reply::text("token"), Reply::text(token)));
        }
        let flags: Vec<Reply> = [(self.optional, "optional"), (self.multiple, "multiple")]
            .into_iter()
            .filter(|&(on, _)| on)
            .map(|(_, flag)| Reply::Simple(flag))
            .collect();
        if !flags.is_empty() {
            map.push((Reply::text("flags"), Reply::Array(flags)));
        }
        if !self.args.is_empty() {
            map.push((Reply::text("arguments"), arguments(self.args)));
        }
        Reply::Map(map)
    }
}

fn arguments(args: &[Arg]) -> Reply {
    Reply::Array(args.iter().map(Arg::reply).collect())
}

/// One command, or one subcommand of a container command (`CLIENT`, `COMMAND`, `CONFIG`).
#[derive(Debug)]
struct Doc {
    summary: &'static str,
    group: &'static str,
    args: &'static [Arg],
    /// Named `command|sub`, as redis-cli expects.
    subcommands: &'static [(&'static str, Doc)],
}

const fn doc(group: &'static str, summary: &'static str, args: &'static [Arg]) -> Doc {
    Doc {
        summary,
        group,
        args,
        subcommands: &[],
    }
}

impl Doc {
    fn reply(&self) -> Reply {
        let mut map = vec![
            (Reply::text("summary"), Reply::text(self.summary)),
            (Reply::text("since"), Reply::text(SINCE)),
            (Reply::text("group"), Reply::text(self.group)),
        ];
        if !self.args.is_empty() {
            map.push((Reply::text("arguments"), arguments(self.args)));
        }
        if !self.subcommands.is_empty() {
            let subs = self
                .subcommands
                .iter()
                .map(|(name, doc)| (Reply::text(*name), doc.reply()))
                .collect();
            map.push((Reply::text("subcommands"), Reply::Map(subs)));
        }
        Reply::Map(map)
    }
}

/// Every command the server answers, in the order of `commands::TABLE`.
const DOCS: &[(&str, Doc)] = &[
    (
        "auth",
        doc(
            "connection",
            "Authenticates the connection with the server's password (--requirepass).",
            &[
                arg("username", "string").optional(),
                arg("password", "string"),
            ],
        ),
    ),
    (
        "client",
        Doc {
            summary: "A container for commands about the connection.",
            group: "connection",
            args: &[],
            subcommands: &[
                (
                    "client|id",
                    doc("connection", "Returns the connection's id.", &[]),
                ),
                (
                    "client|getname",
                    doc("connection", "Returns the connection's name.", &[]),
                ),
                (
                    "client|setname",
                    doc(
                        "connection",
                        "Names the connection.",
                        &[arg("connection-name", "string")],
                    ),
                ),
                (
                    "client|setinfo",
                    doc(
                        "connection",
                        "Accepts the client library's name or version (not kept).",
                        &[arg("attr", "oneof").of(&[
                            arg("libname", "string").token("LIB-NAME"),
                            arg("libver", "string").token("LIB-VER"),
                        ])],
                    ),
                ),
            ],
        },
    ),
    (
        "command",
        Doc {
            summary: "Returns the commands the server answers.",
            group: "server",
            args: &[],
            subcommands: &[
                (
                    "command|count",
                    doc(
                        "server",
                        "Returns how many commands the server answers.",
                        &[],
                    ),
                ),
                (
                    "command|info",
                    doc(
                        "server",
                        "Returns the arity, flags and key positions of commands.",
                        &[arg("command-name", "string").optional().multiple()],
                    ),
                ),
                (
                    "command|docs",
                    doc(
                        "server",
                        "Returns what commands take, for hints like this one.",
                        &[arg("command-name", "string").optional().multiple()],
                    ),
                ),
            ],
        },
    ),
    (
        "config",
        Doc {
            summary: "A container for configuration commands.",
            group: "server",
            args: &[],
            subcommands: &[(
                "config|get",
                doc(
                    "server",
                    "Returns save, appendonly, appendfsync, databases or maxclients.",
                    &[arg("parameter", "string").multiple()],
                ),
            )],
        },
    ),
    (
        "dbsize",
        doc(
            "server",
            "Returns the number of keys in the index, expired ones not yet swept included.",
            &[],
        ),
    ),
    (
        "del",
        doc(
            "generic",
            "Frees keys so they may be claimed again; returns how many were held.",
            &[KEY.multiple()],
        ),
    ),
    (
        "discard",
        doc(
            "transactions",
            "Ends a refused MULTI (there are no transactions).",
            &[],
        ),
    ),
    (
        "echo",
        doc(
            "connection",
            "Returns the message.",
            &[arg("message", "string")],
        ),
    ),
    (
        "exec",
        doc(
            "transactions",
            "Answers EXECABORT: there are no transactions.",
            &[],
        ),
    ),
    (
        "exists",
        doc(
            "generic",
            "Returns how many of the keys are live.",
            &[KEY.multiple()],
        ),
    ),
    (
        "get",
        doc(
            "string",
            "Returns the value a key was claimed with, or nil.",
            &[KEY],
        ),
    ),
    (
        "hello",
        doc(
            "connection",
            "Chooses RESP2 or RESP3, and may authenticate and name the connection.",
            &[arg("arguments", "block").optional().of(&[
                arg("protover", "integer"),
                arg("username_password", "block")
                    .token("AUTH")
                    .optional()
                    .of(&[arg("username", "string"), arg("password", "string")]),
                arg("clientname", "string").token("SETNAME").optional(),
            ])],
        ),
    ),
    (
        "info",
        doc(
            "server",
            "Returns the server's and the store's figures: server, clients, persistence, \
             stats, keyspace.",
            &[arg("section", "string").optional().multiple()],
        ),
    ),
    (
        "multi",
        doc(
            "transactions",
            "Refused: there are no transactions (use a non-transactional pipeline).",
            &[],
        ),
    ),
    (
        "once.abandon",
        doc(
            "once",
            "Frees a leased key for the next attempt at once.",
            &[KEY, TICKET],
        ),
    ),
    (
        "once.begin",
        doc(
            "once",
            "Leases a key for an attempt, or says it is in flight, done (with its outcome) \
             or begun with another fingerprint.",
            &[
                KEY,
                arg("lease_ms", "integer"),
                arg("fingerprint", "string").token("FP").optional(),
            ],
        ),
    ),
    (
        "once.complete",
        doc(
            "once",
            "Stores a leased key's outcome until ttl_ms from now.",
            &[
                KEY,
                TICKET,
                arg("outcome", "string"),
                arg("ttl_ms", "integer"),
            ],
        ),
    ),
    (
        "once.extend",
        doc(
            "once",
            "Moves a lease's end to lease_ms from now (a heartbeat).",
            &[KEY, TICKET, arg("lease_ms", "integer")],
        ),
    ),
    (
        "once.get",
        doc(
            "once",
            "Returns a key's state, attempt, first-seen and expiry times, and outcome.",
            &[KEY],
        ),
    ),
    (
        "ping",
        doc(
            "connection",
            "Returns PONG, or the message.",
            &[arg("message", "string").optional()],
        ),
    ),
    (
        "pttl",
        doc(
            "generic",
            "Returns the milliseconds a key has left, or -2.",
            &[KEY],
        ),
    ),
    ("quit", doc("connection", "Closes the connection.", &[])),
    (
        "select",
        doc(
            "connection",
            "Selects database 0, the only one.",
            &[arg("index", "integer")],
        ),
    ),
    (
        "set",
        doc(
            "string",
            "Claims a key if it is new (OK, and the value kept as its outcome until it \
             expires); nil if it is live. NX and an expiry are required.",
            &[
                KEY,
                arg("value", "string"),
                arg("condition", "pure-token").token("NX"),
                arg("expiration", "oneof").of(&[
                    arg("seconds", "integer").token("EX"),
                    arg("milliseconds", "integer").token("PX"),
                    arg("unix-time-seconds", "unix-time").token("EXAT"),
                    arg("unix-time-milliseconds", "unix-time").token("PXAT"),
                ]),
            ],
        ),
    ),
    (
        "ttl",
        doc(
            "generic",
            "Returns the seconds a key has left (rounded), or -2.",
            &[KEY],
        ),
    ),
    (
        "unlink",
        doc(
            "generic",
            "Frees keys so they may be claimed again; returns how many were held.",
            &[KEY.multiple()],
        ),
    ),
];

/// `COMMAND DOCS [name ...]`: a map from each command named (every command if none is;
/// names the server does not know are left out, as Redis does) to its documentation.
pub(super) fn command_docs(names: &[&[u8]]) -> Reply {
    let entry = |(name, doc): &(&str, Doc)| (Reply::text(*name), doc.reply());
    if names.is_empty() {
        return Reply::Map(DOCS.iter().map(entry).collect());
    }
    Reply::Map(
        names
            .iter()
            .filter_map(|n| {
                let n = String::from_utf8_lossy(n).to_ascii_lowercase();
                DOCS.iter().find(|(name, _)| *name == n).map(entry)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hint redis-cli builds from an argument (its rules, restated).
    fn hint(a: &Arg) -> String {
        let repeat = match a.kind {
            "oneof" => a.args.iter().map(hint).collect::<Vec<_>>().join("|"),
            "block" => a.args.iter().map(hint).collect::<Vec<_>>().join(" "),
            "pure-token" => String::new(),
            _ => a.name.to_string(),
        };
        let token = match (a.token, a.kind) {
            (Some(t), "pure-token") => t.to_string(),
            (Some(t), _) => format!("{t} "),
            (None, _) => String::new(),
        };
        let mut s = format!("{token}{repeat}");
        if a.multiple {
            s = format!("{s} [{repeat} ...]");
        }
        if a.optional {
            s = format!("[{s}]");
        }
        s
    }

    fn hints(name: &str) -> String {
        let (_, d) = DOCS.iter().find(|(n, _)| *n == name).unwrap();
        d.args.iter().map(hint).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn every_command_the_server_answers_has_docs_and_no_other() {
        let answered: Vec<&str> = super::super::commands::TABLE.iter().map(|c| c.0).collect();
        let documented: Vec<&str> = DOCS.iter().map(|d| d.0).collect();
        assert_eq!(documented, answered);
    }

    #[test]
    fn what_redis_cli_needs_is_there() {
        fn check(a: &Arg) {
            assert!(
                [
                    "key",
                    "string",
                    "integer",
                    "unix-time",
                    "pure-token",
                    "oneof",
                    "block"
                ]
                .contains(&a.kind),
                "{a:?}"
            );
            assert_eq!(
                matches!(a.kind, "oneof" | "block"),
                !a.args.is_empty(),
                "{a:?}"
            );
            assert!(a.kind != "pure-token" || a.token.is_some(), "{a:?}");
            a.args.iter().for_each(check);
        }
        for (name, d) in DOCS {
            d.args.iter().for_each(check);
            for (sub, s) in d.subcommands {
                assert!(sub.starts_with(&format!("{name}|")), "{sub}");
                s.args.iter().for_each(check);
            }
        }
    }

    #[test]
    fn hints_read_as_the_readme_gives_the_commands() {
        assert_eq!(
            hints("set"),
            "key value NX EX seconds|PX milliseconds|EXAT unix-time-seconds|\
             PXAT unix-time-milliseconds"
        );
        assert_eq!(hints("once.begin"), "key lease_ms [FP fingerprint]");
        assert_eq!(hints("once.complete"), "key ticket outcome ttl_ms");
        assert_eq!(hints("del"), "key [key ...]");
        assert_eq!(
            hints("hello"),
            "[protover [AUTH username password] [SETNAME clientname]]"
        );
    }

    /// `commands::reply_bound` counts on these sizes: under 16 KiB for the whole table,
    /// and under 1 KiB more for each name (a command named twice is given twice).
    #[test]
    fn the_table_fits_the_reply_bound_of_command() {
        for resp3 in [false, true] {
            let mut out = Vec::new();
            command_docs(&[]).write(&mut out, resp3);
            assert!(out.len() < 16 << 10, "{} bytes", out.len());
            for (name, _) in DOCS {
                let mut one = Vec::new();
                command_docs(&[name.as_bytes(), name.as_bytes()]).write(&mut one, resp3);
                assert!(one.len() < 2 * 1024, "{name}: {} bytes", one.len());
            }
        }
        let mut one = Vec::new();
        command_docs(&[b"SET", b"nosuch"]).write(&mut one, true);
        assert!(one.starts_with(b"%1\r\n$3\r\nset\r\n%4\r\n"), "{one:?}");
    }
}
