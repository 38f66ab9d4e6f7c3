use monitor::kernel::{Kernel, KernelSettings};
fn main() -> anyhow::Result<()> {
    let (mut k, report) = Kernel::load(&KernelSettings { ringbuf_bytes: 16 << 20, path_filter: true })?;
    println!("attached {} missing {:?}", report.attached.len(), report.missing);
    k.add_prefix(b"/tmp/cgtest/")?;
    let mut rb = k.events.take().unwrap();
    let t0 = std::time::Instant::now();
    let mut n = 0;
    while t0.elapsed().as_secs() < 4 {
        while let Some(item) = rb.next() {
            let kind = u32::from_ne_bytes(item[0..4].try_into().unwrap());
            n += 1;
            if kind == 5 { let p = &item[108..]; println!("syscall op={} comm={:?} path={:?}", u32::from_ne_bytes(item[64..68].try_into().unwrap()), String::from_utf8_lossy(&item[48..64]), String::from_utf8_lossy(p)); }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    println!("records {n} counters {:?}", k.counters());
    Ok(())
}
