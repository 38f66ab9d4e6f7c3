//! Loads the embedded eBPF object, attaches its tracepoints and exposes its maps.
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
};
use std::os::fd::AsFd;
use thiserror::Error;

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
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
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
    #[error("watched prefix {0:?} is longer than {PREFIX_KEY_LEN} bytes")]
    PrefixTooLong(String),
    #[error("programs that every guarantee depends on failed to attach: {0}")]
    Essential(String),
}

/// Daemon settings that shape the kernel side.
#[derive(Clone, Debug)]
pub struct KernelSettings {
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ringbuf_bytes: u32,
    /// Report path operations of processes outside sessions by watched prefix.
    pub path_filter: bool,
}

/// Which programs attached, and which tracepoints this kernel lacks.
#[derive(Debug, Default)]
pub struct AttachReport {
    pub attached: Vec<String>,
    pub missing: Vec<(String, String)>,
}

/// Programs without which session tracking or the basic write events are not sound.
const ESSENTIAL: &[&str] = &[
    "sched_process_fork",
    "sched_process_exec",
    "sched_process_exit",
    "sys_enter_openat",
    "sys_exit_openat",
    "sys_enter_renameat2",
    "sys_enter_unlinkat",
    "sys_enter_write",
];

pub struct Kernel {
    /// Keeps the programs (and so their links) alive.
    ebpf: Ebpf,
    /// Attached programs and their links, detached in parallel when dropped.
    links: Vec<(String, TracePointLinkId)>,
    pub events: Option<RingBuf<MapData>>,
    sessions: HashMap<MapData, u32, u64>,
    pending: HashMap<MapData, u32, Pending>,
    prefixes: LpmTrie<MapData, [u8; PREFIX_KEY_LEN], PrefixValue>,
    tracked_fds: HashMap<MapData, FdKey, FdState>,
    counters: PerCpuArray<MapData, u64>,
}

fn tracepoint_category(name: &str) -> &'static str {
    if name.starts_with("sched_") {
        "sched"
    } else {
        "syscalls"
    }
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
                .program_mut(&name)
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
    /// Load and attach everything. Non-essential tracepoints missing on this kernel are
    /// reported, not fatal.
    pub fn load(settings: &KernelSettings) -> Result<(Self, AttachReport), KernelError> {
        super::tracefs::ensure_mounted().map_err(KernelError::Tracefs)?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", settings.ringbuf_bytes)
            .load(EBPF_OBJECT)?;
        // Loaded: the embedded object is not read again.
        crate::os::memory::forget_pages(EBPF_OBJECT);

        let config = KernelConfig {
            path_filter: settings.path_filter as u32,
            self_tgid: std::process::id(),
        };
        let mut cfg: Array<_, KernelConfig> = take(&mut ebpf, "CONFIG")?;
        cfg.set(0, config, 0).map_err(|source| KernelError::Map {
            name: "CONFIG",
            source,
        })?;

        let names: Vec<String> = ebpf.programs().map(|(n, _)| n.to_owned()).collect();
        let mut report = AttachReport::default();
        let mut links = Vec::new();
        for name in names {
            let program = ebpf
                .program_mut(&name)
                .ok_or_else(|| KernelError::Essential(name.clone()))?;
            let tp: &mut TracePoint =
                program.try_into().map_err(|source| KernelError::Program {
                    name: name.clone(),
                    source,
                })?;
            let category = tracepoint_category(&name);
            let result = tp.load().and_then(|()| tp.attach(category, &name));
            match result {
                Ok(link) => {
                    links.push((name.clone(), link));
                    report.attached.push(name);
                }
                Err(e) => {
                    if ESSENTIAL.contains(&name.as_str()) {
                        return Err(KernelError::Program { name, source: e });
                    }
                    report.missing.push((name, e.to_string()));
                }
            }
        }

        let events = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .ok_or(KernelError::MissingMap("EVENTS"))?,
        )
        .map_err(|source| KernelError::Map {
            name: "EVENTS",
            source,
        })?;
        let sessions = take(&mut ebpf, "SESSIONS")?;
        let pending = take(&mut ebpf, "PENDING")?;
        let prefixes = take(&mut ebpf, "PREFIXES")?;
        let tracked_fds = take(&mut ebpf, "TRACKED_FDS")?;
        let counters = take(&mut ebpf, "COUNTERS")?;
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
            },
            report,
        ))
    }

    /// Put `tgid` into agent session `session_id` (its future children inherit it).
    pub fn tag_session(&mut self, tgid: u32, session_id: u64) -> Result<(), KernelError> {
        self.sessions
            .insert(tgid, session_id, 0)
            .map_err(|source| KernelError::Map {
                name: "SESSIONS",
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
            pending: dup_hash(&self.pending, "PENDING")?,
            sessions: dup_hash(&self.sessions, "SESSIONS")?,
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
                name: "PREFIXES",
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
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, KernelError> {
    let fd = map
        .map()
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| KernelError::MapDup { name, source })?;
    let data = MapData::from_fd(fd).map_err(|source| KernelError::Map { name, source })?;
    HashMap::try_from(Map::HashMap(data)).map_err(|source| KernelError::Map { name, source })
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    T::try_from(map).map_err(|source| KernelError::Map { name, source })
}

// The layout of `PrefixKey` must be what aya's `lpm_trie::Key` expects.
const _: () = assert!(size_of::<PrefixKey>() == size_of::<Key<[u8; PREFIX_KEY_LEN]>>());
