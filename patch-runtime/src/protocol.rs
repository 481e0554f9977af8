//! The messages between `ipbp-ld` and a running program, over the program's Unix socket.
//!
//! One request per connection, as `key value` text lines ending with a line `end`:
//!
//! ```text
//! ipbp-patch 1            ipbp-patch 1
//! op hello                op apply
//! end                     build-id 3f2a…
//!                         load-bias 0x55d1c0a00000
//!                         generation 2
//!                         file /…/target/ipbp/patches/4242-99/patch-3.so
//!                         range 0x55d140000000 0x5000
//!                         slot 0x55d1c0c41a10 0x55d140000120
//!                         redirect 0x55d1c0a3b2f0 0x55d140001a40
//!                         detour 0x55d1c0a3c120 0x55d140000300
//!                         settle 0x55d140000040 0x55d1c0a3c120
//!                         settled-patch 0x55d140010000
//!                         data 0x55d140004000 8 _ZN4demo9NEW_STATIC17h…E
//!                         tls 64 40 _ZN4demo5CACHE…E
//!                         summary 2 changed, 1 added
//!                         end
//! ```
//!
//! Addresses are absolute in the running process. An `apply` lists the *whole* desired state:
//! every hot slot to point somewhere other than its original function, the whole redirect
//! table, and every function entry to redirect in place (`detour`: entry → newest version). Slots
//! and entries it does not name go back to their original value, which is how a patch that
//! reverts an edit undoes the earlier one. `settle` entries are the exception: a function of an
//! earlier patch sent on *for good* to an anchor that always leads to the newest version (the
//! image's entry of the function, or the first copy of a function a patch added); the process
//! keeps them without their being named again, so no request grows with the patches before it.
//! `data` and `tls` entries are new state a patch brought
//! in; the program keeps them in its ledger so later patches bind to the same copies.
//! Replies start with `ok` or `error <message>`.
//!
//! A `restart` asks the program to re-execute itself into a newer build of itself (see
//! `restart/` in this crate): `build-id` and `file` name the executable, whose build-id note must
//! say that id; `pass-listeners all` passes every listening socket (else only those the program
//! will take again), `budget-ms` is how long the asker waits from connecting (the program gives
//! up, changing nothing, before that). Its reply has two parts: `restarting` and what is handed over, written just
//! before `execve`; then either nothing (the connection closes when `execve` succeeds: it is
//! close-on-exec) or `error <message>` + `end` when the program could not restart and keeps
//! running. An `error` alone means it refused before changing anything.

use crate::registry::{parse_hex, Fields};
use std::fmt::Write as _;
use std::path::PathBuf;

pub const MAGIC: &str = "ipbp-patch 1";

/// Requests and replies larger than this are refused (a patch message is a few KiB).
pub const MAX_MESSAGE: usize = 16 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // one per connection
pub enum Request {
    Hello,
    Apply(Apply),
    Restart(Restart),
}

/// Re-execute into the executable `file`, whose build id must be `build_id`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restart {
    pub build_id: String,
    pub file: PathBuf,
    /// Pass every listening socket (`pass-listeners all`): the program takes its sockets from
    /// `LISTEN_FDS` itself (ipbp-ld saw `listenfd` among its link inputs). Otherwise only the
    /// sockets it will take again are passed: those of `ipbp::listener` and those it started with.
    pub all_listeners: bool,
    /// How long the asker waits, from connecting (`budget-ms`): the program gives up before.
    pub budget_ms: Option<u64>,
}

/// The error a program whose environment says `IPBP_RESTART=never` answers a `restart` with.
pub const RESTART_OFF: &str = "restarts are off for this program (IPBP_RESTART=never)";

/// What a program hands over to its next build, told just before it calls `execve`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restarting {
    /// Listening sockets passed (systemd protocol, from fd 3).
    pub listeners: u32,
    /// `on_restart` hooks that handed over bytes, and how many bytes in all.
    pub states: u32,
    pub state_bytes: u64,
    /// Time the `on_restart` hooks took.
    pub hooks_us: u64,
    /// Time waiting for the program's safe point (0 without safe points).
    pub safe_point_us: u64,
}

/// The whole answer to a `restart`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartReply {
    /// The program called `execve` and the connection closed: it runs the new build now.
    Executed(Restarting),
    /// It refused, or tried and is still running its current code (`Some`: the hooks ran).
    Failed(Option<Restarting>, String),
}

impl Restarting {
    /// The first part of the reply (no `end`: the second part follows only on failure).
    pub fn encode(&self) -> String {
        let mut s = String::from("restarting\n");
        line(&mut s, "listeners", self.listeners);
        line(&mut s, "states", self.states);
        line(&mut s, "state-bytes", self.state_bytes);
        line(&mut s, "hooks-us", self.hooks_us);
        line(&mut s, "safe-point-us", self.safe_point_us);
        s
    }
}

impl RestartReply {
    pub fn parse(text: &str) -> Result<RestartReply, String> {
        let f = Fields::new(text);
        let restarting = if text.starts_with("restarting\n") {
            let num = |k: &str| {
                f.get(k).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| format!("missing `{k}`"))
            };
            Some(Restarting {
                listeners: num("listeners")? as u32,
                states: num("states")? as u32,
                state_bytes: num("state-bytes")?,
                hooks_us: num("hooks-us")?,
                safe_point_us: num("safe-point-us")?,
            })
        } else {
            None
        };
        match (f.get("error"), restarting) {
            (Some(e), r) => Ok(RestartReply::Failed(r, e.to_string())),
            (None, Some(r)) => Ok(RestartReply::Executed(r)),
            (None, None) => Err(format!("unexpected reply: {}", text.lines().next().unwrap_or(""))),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Apply {
    pub build_id: String,
    pub load_bias: u64,
    /// The generation (number of applied patches) this patch was planned against.
    pub generation: u64,
    /// The patch library; `None` for a patch that only moves slots (e.g. a full revert).
    pub file: Option<PathBuf>,
    /// Where the library was linked to load: start and length.
    pub range: Option<(u64, u64)>,
    /// xxh3-128 of the library's bytes: the process loads only exactly these bytes.
    pub hash: Option<u128>,
    /// Hot slot address → function to call.
    pub slots: Vec<(u64, u64)>,
    /// Original function address → newest version (generic hot functions, `ipbp::call`).
    pub redirects: Vec<(u64, u64)>,
    /// Function entry → newest version: a jump written over the entry (in-place patching).
    pub detours: Vec<(u64, u64)>,
    /// Function entry of an earlier patch → anchor: a jump written for good (never named again,
    /// never reverted by a later set).
    pub settle: Vec<(u64, u64)>,
    /// Start of each earlier patch this request is done with (its functions settled, or left
    /// with their code): the process stops listing them in `hello`.
    pub settled_patches: Vec<u64>,
    pub data: Vec<LedgerEntry>,
    pub tls: Vec<LedgerEntry>,
    /// Human summary for the program's own log line.
    pub summary: String,
    /// What changed, demangled, for the application's `on_patch` callbacks.
    pub changed: Vec<String>,
    pub added: Vec<String>,
    pub not_redirected: Vec<String>,
}

/// A static (`data`: absolute address) or thread-local (`tls`: offset inside the TLS reserve)
/// that exists only because a patch added it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub addr: u64,
    pub size: u64,
    pub name: String,
}

/// What a program says about itself in reply to `hello`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hello {
    pub pid: u32,
    pub build_id: String,
    pub load_bias: u64,
    pub generation: u64,
    /// Thread-pointer offset of the TLS reserve (`&RESERVE - tp`, the same in every thread) and
    /// its size. `None` when the program has no static TLS block.
    pub tls_reserve: Option<(i64, u64)>,
    pub slots: Vec<(u64, u64)>,
    pub redirects: Vec<(u64, u64)>,
    pub detours: Vec<(u64, u64)>,
    pub data: Vec<LedgerEntry>,
    pub tls: Vec<LedgerEntry>,
    /// Patch libraries loaded whose functions are not yet sent on for good, in load order
    /// (normally the two newest): start, length, path. The next patch settles all but the one
    /// live code runs in (names them in `settled-patch`), whose functions it sends on live.
    pub patches: Vec<(u64, u64, PathBuf)>,
    /// How many patch libraries the process holds in all.
    pub loaded: u64,
    /// How many functions of earlier patches are sent on for good.
    pub settled: u64,
}

impl Hello {
    /// Which of [`Hello::patches`] live code runs in: the newest one a live detour (in place), slot
    /// or redirect (hot points) leads into — after a failed link's patch was undone, an older one
    /// than the newest loaded — or else the newest. `None` when no patch is listed.
    pub fn running_patch(&self) -> Option<usize> {
        let targets = || self.detours.iter().chain(&self.slots).chain(&self.redirects).map(|t| t.1);
        let holds = |p: &(u64, u64, PathBuf)| targets().any(|t| p.0 <= t && t < p.0.saturating_add(p.1));
        self.patches.iter().rposition(holds).or(self.patches.len().checked_sub(1))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Hello(Hello),
    Applied(Applied),
    Error(String),
}

/// What applying a patch took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub generation: u64,
    /// Checks and `dlopen`.
    pub load_us: u64,
    /// Storing slots and the redirect table, and writing detours (threads parked included).
    pub install_us: u64,
    /// From the start of the install until every call of a changed function runs new code: the
    /// breakpoints placed (the rest of the install makes that path a plain jump), or the threads
    /// released. 0 when no detour was written.
    pub live_us: u64,
    /// The longest time the install kept any other thread of the program from its own code
    /// (0 when no thread was interrupted).
    pub pause_us: u64,
    /// Loaded, and switched when the application reaches its next safe point.
    pub deferred: bool,
}

fn line(s: &mut String, key: &str, value: impl std::fmt::Display) {
    let _ = writeln!(s, "{key} {value}");
}

fn pairs(s: &mut String, key: &str, list: &[(u64, u64)]) {
    for (a, b) in list {
        let _ = writeln!(s, "{key} {a:#x} {b:#x}");
    }
}

fn entries(s: &mut String, key: &str, list: &[LedgerEntry]) {
    for e in list {
        let _ = writeln!(s, "{key} {:#x} {} {}", e.addr, e.size, e.name);
    }
}

fn parse_pair(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.split_once(' ')?;
    Some((parse_hex(a)?, parse_hex(b)?))
}

fn parse_entry(v: &str) -> Option<LedgerEntry> {
    let mut it = v.splitn(3, ' ');
    Some(LedgerEntry {
        addr: parse_hex(it.next()?)?,
        size: it.next()?.parse().ok()?,
        name: it.next()?.to_string(),
    })
}

fn all<T>(f: &Fields, key: &'static str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, String> {
    f.all(key).map(|v| parse(v).ok_or_else(|| format!("bad `{key}` line: {v}"))).collect()
}

impl Request {
    pub fn encode(&self) -> String {
        let mut s = String::new();
        line(&mut s, "ipbp-patch", 1);
        match self {
            Request::Hello => line(&mut s, "op", "hello"),
            Request::Restart(r) => {
                line(&mut s, "op", "restart");
                line(&mut s, "build-id", &r.build_id);
                line(&mut s, "file", r.file.display());
                if r.all_listeners {
                    line(&mut s, "pass-listeners", "all");
                }
                if let Some(ms) = r.budget_ms {
                    line(&mut s, "budget-ms", ms);
                }
            }
            Request::Apply(a) => {
                line(&mut s, "op", "apply");
                line(&mut s, "build-id", &a.build_id);
                line(&mut s, "load-bias", format_args!("{:#x}", a.load_bias));
                line(&mut s, "generation", a.generation);
                if let Some(f) = &a.file {
                    line(&mut s, "file", f.display());
                }
                if let Some((start, len)) = a.range {
                    line(&mut s, "range", format_args!("{start:#x} {len:#x}"));
                }
                if let Some(hash) = a.hash {
                    line(&mut s, "hash", format_args!("{hash:032x}"));
                }
                pairs(&mut s, "slot", &a.slots);
                pairs(&mut s, "redirect", &a.redirects);
                pairs(&mut s, "detour", &a.detours);
                pairs(&mut s, "settle", &a.settle);
                for p in &a.settled_patches {
                    line(&mut s, "settled-patch", format_args!("{p:#x}"));
                }
                entries(&mut s, "data", &a.data);
                entries(&mut s, "tls", &a.tls);
                if !a.summary.is_empty() {
                    line(&mut s, "summary", &a.summary);
                }
                for (key, names) in
                    [("changed", &a.changed), ("added", &a.added), ("not-redirected", &a.not_redirected)]
                {
                    for n in names {
                        line(&mut s, key, n.replace('\n', " "));
                    }
                }
            }
        }
        s.push_str("end\n");
        s
    }

    pub fn parse(text: &str) -> Result<Request, String> {
        if !text.starts_with(MAGIC) {
            return Err("not an ipbp-patch 1 request".into());
        }
        let f = Fields::new(text);
        match f.get("op") {
            Some("hello") => Ok(Request::Hello),
            Some("restart") => Ok(Request::Restart(Restart {
                build_id: f.get("build-id").ok_or("missing `build-id`")?.to_string(),
                file: PathBuf::from(f.get("file").ok_or("missing `file`")?),
                all_listeners: f.get("pass-listeners") == Some("all"),
                budget_ms: match f.get("budget-ms") {
                    Some(ms) => Some(ms.parse().map_err(|_| "bad `budget-ms`")?),
                    None => None,
                },
            })),
            Some("apply") => {
                let hex =
                    |k: &str| f.get(k).and_then(parse_hex).ok_or_else(|| format!("missing or bad `{k}`"));
                Ok(Request::Apply(Apply {
                    build_id: f.get("build-id").ok_or("missing `build-id`")?.to_string(),
                    load_bias: hex("load-bias")?,
                    generation: f
                        .get("generation")
                        .and_then(|g| g.parse().ok())
                        .ok_or("missing `generation`")?,
                    file: f.get("file").map(PathBuf::from),
                    range: match f.get("range") {
                        Some(r) => Some(parse_pair(r).ok_or("bad `range`")?),
                        None => None,
                    },
                    hash: match f.get("hash") {
                        Some(h) => Some(u128::from_str_radix(h, 16).map_err(|_| "bad `hash`")?),
                        None => None,
                    },
                    slots: all(&f, "slot", parse_pair)?,
                    redirects: all(&f, "redirect", parse_pair)?,
                    detours: all(&f, "detour", parse_pair)?,
                    settle: all(&f, "settle", parse_pair)?,
                    settled_patches: all(&f, "settled-patch", parse_hex)?,
                    data: all(&f, "data", parse_entry)?,
                    tls: all(&f, "tls", parse_entry)?,
                    summary: f.get("summary").unwrap_or("").to_string(),
                    changed: f.all("changed").map(str::to_string).collect(),
                    added: f.all("added").map(str::to_string).collect(),
                    not_redirected: f.all("not-redirected").map(str::to_string).collect(),
                }))
            }
            other => Err(format!("unknown op {other:?}")),
        }
    }
}

impl Reply {
    pub fn encode(&self) -> String {
        let mut s = String::new();
        match self {
            Reply::Error(e) => line(&mut s, "error", e.replace('\n', " ")),
            Reply::Applied(a) => {
                s.push_str("ok\n");
                line(&mut s, "generation", a.generation);
                line(&mut s, "load-us", a.load_us);
                line(&mut s, "install-us", a.install_us);
                line(&mut s, "live-us", a.live_us);
                line(&mut s, "pause-us", a.pause_us);
                if a.deferred {
                    line(&mut s, "deferred", 1);
                }
            }
            Reply::Hello(h) => {
                s.push_str("ok\n");
                line(&mut s, "pid", h.pid);
                line(&mut s, "build-id", &h.build_id);
                line(&mut s, "load-bias", format_args!("{:#x}", h.load_bias));
                line(&mut s, "generation", h.generation);
                if let Some((tpoff, size)) = h.tls_reserve {
                    line(&mut s, "tls-reserve", format_args!("{tpoff} {size}"));
                }
                pairs(&mut s, "slot", &h.slots);
                pairs(&mut s, "redirect", &h.redirects);
                pairs(&mut s, "detour", &h.detours);
                entries(&mut s, "data", &h.data);
                entries(&mut s, "tls", &h.tls);
                for (start, len, path) in &h.patches {
                    let _ = writeln!(s, "patch {start:#x} {len:#x} {}", path.display());
                }
                line(&mut s, "loaded", h.loaded);
                line(&mut s, "settled", h.settled);
            }
        }
        s.push_str("end\n");
        s
    }

    /// Parses a reply; `hello` says which kind is expected (the two `ok` forms differ by fields).
    pub fn parse(text: &str, hello: bool) -> Result<Reply, String> {
        let f = Fields::new(text);
        if let Some(e) = f.get("error") {
            return Ok(Reply::Error(e.to_string()));
        }
        if !text.starts_with("ok") {
            return Err(format!("unexpected reply: {}", text.lines().next().unwrap_or("")));
        }
        let num =
            |k: &str| f.get(k).and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| format!("missing `{k}`"));
        if !hello {
            return Ok(Reply::Applied(Applied {
                generation: num("generation")?,
                load_us: num("load-us")?,
                install_us: num("install-us")?,
                live_us: num("live-us").unwrap_or(0),
                pause_us: num("pause-us").unwrap_or(0),
                deferred: f.get("deferred") == Some("1"),
            }));
        }
        let tls_reserve = match f.get("tls-reserve") {
            Some(v) => {
                let (a, b) = v.split_once(' ').ok_or("bad `tls-reserve`")?;
                Some((
                    a.parse().map_err(|_| "bad `tls-reserve`")?,
                    b.parse().map_err(|_| "bad `tls-reserve`")?,
                ))
            }
            None => None,
        };
        let patches = all(&f, "patch", |v| {
            let mut it = v.splitn(3, ' ');
            Some((parse_hex(it.next()?)?, parse_hex(it.next()?)?, PathBuf::from(it.next()?)))
        })?;
        Ok(Reply::Hello(Hello {
            pid: num("pid")? as u32,
            build_id: f.get("build-id").ok_or("missing `build-id`")?.to_string(),
            load_bias: f.get("load-bias").and_then(parse_hex).ok_or("missing `load-bias`")?,
            generation: num("generation")?,
            tls_reserve,
            slots: all(&f, "slot", parse_pair)?,
            redirects: all(&f, "redirect", parse_pair)?,
            detours: all(&f, "detour", parse_pair)?,
            data: all(&f, "data", parse_entry)?,
            tls: all(&f, "tls", parse_entry)?,
            loaded: f.get("loaded").and_then(|v| v.parse().ok()).unwrap_or(patches.len() as u64),
            settled: f.get("settled").and_then(|v| v.parse().ok()).unwrap_or(0),
            patches,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_round_trips() {
        let a = Apply {
            build_id: "abc".into(),
            load_bias: 0x5555_0000_0000,
            generation: 3,
            file: Some("/tmp/p/patch 4.so".into()),
            range: Some((0x5500_0000_0000, 0x3000)),
            hash: Some(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            slots: vec![(0x10, 0x20)],
            redirects: vec![(0x30, 0x40), (0x50, 0x60)],
            detours: vec![(0x70, 0x80)],
            settle: vec![(0x90, 0x70)],
            settled_patches: vec![0x5500_0000_0000],
            data: vec![LedgerEntry { addr: 0x70, size: 8, name: "_ZN3app3NEW17h0E".into() }],
            tls: vec![LedgerEntry { addr: 64, size: 40, name: "tls name".into() }],
            summary: "1 changed".into(),
            changed: vec!["<app::Circle as app::Shape>::area".into()],
            added: vec![],
            not_redirected: vec!["app::main::{{closure}}".into()],
        };
        let text = Request::Apply(a.clone()).encode();
        assert_eq!(Request::parse(&text), Ok(Request::Apply(a)));
        assert_eq!(Request::parse(&Request::Hello.encode()), Ok(Request::Hello));
    }

    #[test]
    fn the_running_patch_is_the_newest_one_live_jumps_slots_or_redirects_lead_into() {
        let mut h = Hello {
            pid: 7,
            build_id: "b".into(),
            load_bias: 0x1000,
            generation: 2,
            tls_reserve: None,
            slots: vec![],
            redirects: vec![],
            detours: vec![],
            data: vec![],
            tls: vec![],
            patches: vec![(0x1000, 0x100, "p1.so".into()), (0x800, 0x100, "p2.so".into())],
            loaded: 2,
            settled: 0,
        };
        assert_eq!(h.running_patch(), Some(1), "nothing leads into either: the newest");
        h.detours = vec![(0x50, 0x1010)];
        assert_eq!(h.running_patch(), Some(0), "in place, undone back to patch 1");
        h.detours.clear();
        h.slots = vec![(0x60, 0x400), (0x68, 0x1020)];
        assert_eq!(h.running_patch(), Some(0), "hot points, a slot into patch 1");
        h.redirects = vec![(0x70, 0x810)];
        assert_eq!(h.running_patch(), Some(1), "a redirect into patch 2");
        h.patches.clear();
        assert_eq!(h.running_patch(), None);
    }

    #[test]
    fn replies_round_trip() {
        let h = Hello {
            pid: 7,
            build_id: "b".into(),
            load_bias: 0x1000,
            generation: 1,
            tls_reserve: Some((-8256, 8192)),
            slots: vec![(1, 2)],
            redirects: vec![],
            detours: vec![(3, 4)],
            data: vec![],
            tls: vec![],
            patches: vec![(0x1000, 0x2000, "/x/patch-1.so".into())],
            loaded: 3,
            settled: 9,
        };
        assert_eq!(Reply::parse(&Reply::Hello(h.clone()).encode(), true), Ok(Reply::Hello(h)));
        let ok = Reply::Applied(Applied {
            generation: 2,
            load_us: 900,
            install_us: 3,
            live_us: 2,
            pause_us: 40,
            deferred: true,
        });
        assert_eq!(Reply::parse(&ok.encode(), false), Ok(ok));
        let e = Reply::Error("symbol x\nmissing".into());
        assert_eq!(Reply::parse(&e.encode(), false), Ok(Reply::Error("symbol x missing".into())));
    }

    #[test]
    fn restarts_round_trip() {
        let r =
            Restart { build_id: "ab12".into(), file: "/t/debug/deps/app-1f".into(), ..Restart::default() };
        assert_eq!(Request::parse(&Request::Restart(r.clone()).encode()), Ok(Request::Restart(r)));
        let all = Restart { all_listeners: true, budget_ms: Some(11_000), ..Restart::default() };
        assert_eq!(Request::parse(&Request::Restart(all.clone()).encode()), Ok(Request::Restart(all)));
        let going = Restarting { listeners: 2, states: 1, state_bytes: 8, hooks_us: 30, safe_point_us: 0 };
        assert_eq!(RestartReply::parse(&going.encode()), Ok(RestartReply::Executed(going)));
        let failed = format!("{}{}", going.encode(), Reply::Error("cannot execute x".into()).encode());
        assert_eq!(
            RestartReply::parse(&failed),
            Ok(RestartReply::Failed(Some(going), "cannot execute x".into()))
        );
        let refused = Reply::Error(RESTART_OFF.into()).encode();
        assert_eq!(RestartReply::parse(&refused), Ok(RestartReply::Failed(None, RESTART_OFF.into())));
        assert!(RestartReply::parse("").is_err());
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(Request::parse("hello\nend\n").is_err());
        assert!(Request::parse("ipbp-patch 1\nop apply\nend\n").is_err());
        assert!(Reply::parse("what\n", false).is_err());
    }
}
