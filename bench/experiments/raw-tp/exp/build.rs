//! Builds the eBPF object (`monitor-ebpf`) with aya-build, the aya-template way; the daemon
//! embeds it with `include_bytes_aligned!`. Set `AYA_BUILD_SKIP=1` for metadata-only work.
use std::path::Path;

fn main() -> aya_build::Result<()> {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest).join("../exp-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "exp-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
