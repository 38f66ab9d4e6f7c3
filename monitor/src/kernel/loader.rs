//! Loads the embedded eBPF object, attaches its tracepoints and exposes its maps, all by
//! the names in `monitor_common::programs` (the table the eBPF crate is checked against).
use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, HashMap, IterableMap, LpmTrie, Map, MapData, PerCpuArray, RingBuf, lpm_trie::Key,
    },
    programs::{TracePoint, trace_point::TracePointLinkId},
};
use monitor_common::{
    COUNTER_SLOTS, FdKey, FdState, KernelConfig, PREFIX_DIR, PREFIX_EXACT, PREFIX_KEY_LEN, Pending,
    PrefixKey, PrefixValue, counter_name,
    programs::{MapId, PROGRAMS},
};
use std::os::fd::AsFd;
use thiserror::Error;

use super::log::{self, EbpfLog};

/// The compiled `monitor-ebpf` object, built by `build.rs` through aya-build.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor"));

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("mounting tracefs: {0}")]
    Tracefs(#[source] std::io::Error),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF program {0} is missing from the object")]
    MissingProgram(&'static str),
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("duplicating the descriptor of eBPF map {name}: {source}")]
    MapDup {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error(transparent)]
    Log(#[from] super::log::LogError),
    #[error("watched prefix {0:?} is longer than {PREFIX_KEY_LEN} bytes")]
    PrefixTooLong(String),
}

/// Daemon settings that shape the kernel side.
#[derive(Clone, Debug)]
pub struct KernelSettings {
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ringbuf_bytes: u32,
    /// Report path operations of processes outside sessions by watched prefix.
    pub path_filter: bool,
    /// Programs not to attach (`kernel.skip_programs`, checked by the configuration).
    pub skip_programs: Vec<String>,
}

/// Which programs attached, and which tracepoints this kernel lacks.
#[derive(Debug, Default)]
pub struct AttachReport {
    pub attached: Vec<String>,
    pub missing: Vec<(String, String)>,
    /// Not attached because the configuration skips them.
    pub skipped: Vec<String>,
}

pub struct Kernel {
    /// Keeps the programs (and so their links) alive.
    ebpf: Ebpf,
    /// Attached programs and their links, detached in parallel when dropped.
    links: Vec<(&'static str, TracePointLinkId)>,
    pub events: Option<RingBuf<MapData>>,
    sessions: HashMap<MapData, u32, u64>,
    pending: HashMap<MapData, u32, Pending>,
    prefixes: LpmTrie<MapData, [u8; PREFIX_KEY_LEN], PrefixValue>,
    tracked_fds: HashMap<MapData, FdKey, FdState>,
    counters: PerCpuArray<MapData, u64>,
    /// Forwards the programs' diagnostics while they can log (debug level or more).
    _log: Option<EbpfLog>,
}

/// Threads that detach the programs at shutdown. Detaching a syscall tracepoint program
/// waits for RCU grace periods (~70 ms each here): one after the other, the 73 took 5 s;
/// the kernel overlaps about half of that wait across threads (measured: 4 threads 2.6 s,
/// more threads no better).
const DETACH_THREADS: usize = 4;

impl Drop for Kernel {
    fn drop(&mut self) {
        let mut owned = Vec::with_capacity(self.links.len());
        for (name, id) in self.links.drain(..) {
            let link = self
                .ebpf
                .program_mut(name)
                .and_then(|p| <&mut TracePoint>::try_from(p).ok())
                .and_then(|tp| tp.take_link(id).ok());
            owned.extend(link);
        }
        if owned.is_empty() {
            return;
        }
        let per_thread = owned.len().div_ceil(DETACH_THREADS);
        std::thread::scope(|s| {
            while !owned.is_empty() {
                let chunk: Vec<_> = owned.drain(..per_thread.min(owned.len())).collect();
                s.spawn(move || drop(chunk));
            }
        });
    }
}

impl Kernel {
    /// Load and attach every program of the table. Non-essential tracepoints missing on
    /// this kernel are reported, not fatal. The programs log (aya-log) at the level of the
    /// `tracing` subscriber, into `tracing`.
    pub fn load(settings: &KernelSettings) -> Result<(Self, AttachReport), KernelError> {
        Self::load_logging(settings, log::level(), tracing_log::LogTracer::new())
    }

    /// [`Kernel::load`] with the programs' log level (`aya_log::Level` as `u8`, 0 = off)
    /// and the logger their records go to.
    pub fn load_logging<L: ::log::Log + Send + 'static>(
        settings: &KernelSettings,
        log_level: u8,
        logger: L,
    ) -> Result<(Self, AttachReport), KernelError> {
        super::tracefs::ensure_mounted().map_err(KernelError::Tracefs)?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MapId::Events.name(), settings.ringbuf_bytes)
            .override_global(aya_log::LEVEL, &log_level, true)
            .load(EBPF_OBJECT)?;
        let log = if log::logs_at(log_level) {
            Some(EbpfLog::start(&mut ebpf, logger)?)
        } else {
            None
        };
        // Loaded: the embedded object is not read again.
        crate::os::memory::forget_pages(EBPF_OBJECT);

        let config = KernelConfig {
            path_filter: settings.path_filter as u32,
            self_tgid: std::process::id(),
        };
        let mut cfg: Array<_, KernelConfig> = take(&mut ebpf, MapId::Config)?;
        cfg.set(0, config, 0).map_err(|source| KernelError::Map {
            name: MapId::Config.name(),
            source,
        })?;

        let mut report = AttachReport::default();
        let mut links = Vec::new();
        for p in PROGRAMS {
            if settings.skip_programs.iter().any(|s| s == p.name) {
                report.skipped.push(p.name.to_owned());
                continue;
            }
            let program = ebpf
                .program_mut(p.name)
                .ok_or(KernelError::MissingProgram(p.name))?;
            let tp: &mut TracePoint =
                program.try_into().map_err(|source| KernelError::Program {
                    name: p.name,
                    source,
                })?;
            let (category, tracepoint) = p.tracepoint();
            match tp.load().and_then(|()| tp.attach(category, tracepoint)) {
                Ok(link) => {
                    links.push((p.name, link));
                    report.attached.push(p.name.to_owned());
                }
                Err(source) if p.essential => {
                    return Err(KernelError::Program {
                        name: p.name,
                        source,
                    });
                }
                Err(e) => report.missing.push((p.name.to_owned(), e.to_string())),
            }
        }

        let events = take(&mut ebpf, MapId::Events)?;
        let sessions = take(&mut ebpf, MapId::Sessions)?;
        let pending = take(&mut ebpf, MapId::Pending)?;
        let prefixes = take(&mut ebpf, MapId::Prefixes)?;
        let tracked_fds = take(&mut ebpf, MapId::TrackedFds)?;
        let counters = take(&mut ebpf, MapId::Counters)?;
        Ok((
            Kernel {
                ebpf,
                links,
                events: Some(events),
                sessions,
                pending,
                prefixes,
                tracked_fds,
                counters,
                _log: log,
            },
            report,
        ))
    }

    /// Put `tgid` into agent session `session_id` (its future children inherit it).
    pub fn tag_session(&mut self, tgid: u32, session_id: u64) -> Result<(), KernelError> {
        self.sessions
            .insert(tgid, session_id, 0)
            .map_err(|source| KernelError::Map {
                name: MapId::Sessions.name(),
                source,
            })
    }

    /// Kernel view of a process's session (0 = none).
    pub fn session_of(&self, tgid: u32) -> u64 {
        self.sessions.get(&tgid, 0).unwrap_or(0)
    }

    /// Independent handles on the `PENDING` (tid -> syscall in progress) and `SESSIONS`
    /// (tgid -> session) maps, on duplicated map descriptors: the gate's listener thread
    /// looks them up without touching `Kernel` (and so without its lock). Lookups are
    /// `bpf(BPF_MAP_LOOKUP_ELEM)` syscalls, safe from any thread.
    pub fn gate_maps(&self) -> Result<GateMaps, KernelError> {
        Ok(GateMaps {
            pending: dup_hash(&self.pending, MapId::Pending)?,
            sessions: dup_hash(&self.sessions, MapId::Sessions)?,
        })
    }

    /// Forget `tgid` (used when a session ends or a stale entry is found).
    pub fn untag(&mut self, tgid: u32) {
        let _ = self.sessions.remove(&tgid);
    }

    /// Forget a descriptor the daemon knows was closed with its process.
    pub fn forget_fd(&mut self, tgid: u32, fd: u32) {
        let _ = self.tracked_fds.remove(&FdKey { tgid, fd });
    }

    /// Add a watched prefix. A directory prefix ends with `/` and matches everything below.
    pub fn add_prefix(&mut self, prefix: &[u8]) -> Result<(), KernelError> {
        if prefix.len() > PREFIX_KEY_LEN || prefix.is_empty() {
            return Err(KernelError::PrefixTooLong(
                String::from_utf8_lossy(prefix).into_owned(),
            ));
        }
        let class = if prefix.ends_with(b"/") {
            PREFIX_DIR
        } else {
            PREFIX_EXACT
        };
        let mut data = [0u8; PREFIX_KEY_LEN];
        data[..prefix.len()].copy_from_slice(prefix);
        let key = Key::new(prefix.len() as u32 * 8, data);
        let value = PrefixValue {
            class,
            len: prefix.len() as u32,
        };
        self.prefixes
            .insert(&key, value, 0)
            .map_err(|source| KernelError::Map {
                name: MapId::Prefixes.name(),
                source,
            })
    }

    /// Sum of each kernel counter over all CPUs, with its name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        (0..COUNTER_SLOTS)
            .filter(|i| counter_name(*i) != "unused")
            .map(|i| {
                let total = self
                    .counters
                    .get(&i, 0)
                    .map(|per_cpu| per_cpu.iter().sum::<u64>())
                    .unwrap_or(0);
                (counter_name(i), total)
            })
            .collect()
    }
}

/// Read-only handles on the maps the gate needs (see [`Kernel::gate_maps`]).
pub struct GateMaps {
    /// tid -> the syscall that thread is in (open flags, session, tgid, enter time).
    pub pending: HashMap<MapData, u32, Pending>,
    /// tgid -> agent session.
    pub sessions: HashMap<MapData, u32, u64>,
}

fn dup_hash<K: aya::Pod, V: aya::Pod>(
    map: &HashMap<MapData, K, V>,
    id: MapId,
) -> Result<HashMap<MapData, K, V>, KernelError> {
    let name = id.name();
    let fd = map
        .map()
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| KernelError::MapDup { name, source })?;
    let data = MapData::from_fd(fd).map_err(|source| KernelError::Map { name, source })?;
    HashMap::try_from(Map::HashMap(data)).map_err(|source| KernelError::Map { name, source })
}

fn take<T>(ebpf: &mut Ebpf, id: MapId) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let name = id.name();
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    T::try_from(map).map_err(|source| KernelError::Map { name, source })
}

// The layout of `PrefixKey` must be what aya's `lpm_trie::Key` expects.
const _: () = assert!(size_of::<PrefixKey>() == size_of::<Key<[u8; PREFIX_KEY_LEN]>>());

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeSet,
        sync::{Arc, Mutex},
    };

    use monitor_common::programs::{Category, MapId, PROGRAMS, program};

    use super::EBPF_OBJECT;

    /// The eBPF crate checks at compile time that each of its programs and maps is in the
    /// table; this checks the other direction on the object the daemon embeds: the table
    /// names nothing the object lacks, and the object holds nothing the table does not name.
    #[test]
    fn the_object_holds_exactly_the_table() {
        if EBPF_OBJECT.is_empty() {
            // AYA_BUILD_SKIP=1: no object was built.
            return;
        }
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded eBPF object parses");
        let in_object: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
        let in_table: BTreeSet<&str> = PROGRAMS.iter().map(|p| p.name).collect();
        assert_eq!(in_object, in_table);
        for p in obj.programs.values() {
            assert!(
                matches!(p.section, aya_obj::ProgramSection::TracePoint),
                "{:?}",
                p.section
            );
        }
        let maps: BTreeSet<&str> = obj
            .maps
            .keys()
            .map(String::as_str)
            // Data sections (.rodata, .bss, ...) are maps of the object too.
            .filter(|n| !n.starts_with('.'))
            .collect();
        let listed: BTreeSet<&str> = MapId::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(maps, listed);
    }

    #[test]
    fn table_lookups() {
        let fork = program("sched_process_fork").expect("listed");
        assert_eq!(fork.tracepoint(), ("sched", "sched_process_fork"));
        assert!(fork.essential);
        let open = program("sys_enter_open").expect("listed");
        assert_eq!((open.category, open.essential), (Category::Syscalls, false));
        assert_eq!(open.tracepoint(), ("syscalls", "sys_enter_open"));
        assert!(program("sys_enter_read").is_none());
        let essential: Vec<&str> = PROGRAMS
            .iter()
            .filter(|p| p.essential)
            .map(|p| p.name)
            .collect();
        assert_eq!(
            essential,
            [
                "sched_process_fork",
                "sched_process_exec",
                "sched_process_exit",
                "sys_enter_openat",
                "sys_exit_openat",
                "sys_enter_renameat2",
                "sys_enter_unlinkat",
                "sys_enter_write",
            ]
        );
    }

    /// `kernel.skip_programs`: the named programs are reported skipped, not attached.
    #[test]
    fn skipped_programs_are_not_attached() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: loading eBPF programs needs root");
            return;
        }
        let skip = ["sys_enter_close", "sys_enter_dup", "sys_exit_dup"];
        let settings = super::KernelSettings {
            ringbuf_bytes: 4096,
            path_filter: true,
            skip_programs: skip.iter().map(|s| s.to_string()).collect(),
        };
        let (_kernel, report) = super::Kernel::load(&settings).unwrap();
        assert_eq!(report.skipped, skip);
        assert!(report.attached.iter().all(|a| !skip.contains(&a.as_str())));
        assert_eq!(
            report.attached.len() + report.missing.len() + skip.len(),
            PROGRAMS.len()
        );
    }

    /// The programs, loaded with logging on, log a record lost to a full ring buffer,
    /// and the record reaches the logger with its level and target.
    #[test]
    fn a_full_ring_buffer_is_logged() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: loading eBPF programs needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let captured = Captured::default();
        let settings = super::KernelSettings {
            // One page, never read: a few records fill it.
            ringbuf_bytes: 4096,
            path_filter: true,
            skip_programs: Vec::new(),
        };
        // Trace: every logging branch is live, and must pass the verifier too.
        let (mut kernel, report) =
            super::Kernel::load_logging(&settings, aya_log::Level::Trace as u8, captured.clone())
                .unwrap();
        assert!(report.missing.is_empty(), "{:?}", report.missing);
        kernel
            .add_prefix(format!("{}/", root.display()).as_bytes())
            .unwrap();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"for i in $(seq 100); do : > "$D/f$i"; done"#)
            .env("D", &root)
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let found = captured.0.lock().unwrap().iter().any(|(l, t, m)| {
                *l == log::Level::Debug
                    && t == "monitor::kernel::ebpf"
                    && m.starts_with("ring buffer full")
            });
            if found {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no ring-buffer-full log record: {:?}",
                captured.0.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let drops = kernel
            .counters()
            .into_iter()
            .find(|(n, _)| *n == "ringbuf_drops")
            .map(|(_, v)| v);
        assert!(drops > Some(0), "{drops:?}");
    }

    /// Collects the records aya-log hands over.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<(log::Level, String, String)>>>);

    impl log::Log for Captured {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, r: &log::Record<'_>) {
            self.0
                .lock()
                .unwrap()
                .push((r.level(), r.target().to_owned(), r.args().to_string()));
        }
        fn flush(&self) {}
    }
}
