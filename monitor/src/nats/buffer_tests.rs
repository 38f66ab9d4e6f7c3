use super::*;

fn rec(i: usize, size: usize) -> Record {
    Record {
        subject: format!("confgate.events.h.k{i}"),
        id: format!("h:b:{i}"),
        payload: vec![b'x'; size],
    }
}

/// Every record readable from the start, in order (as the publisher reads them).
fn read_all(b: &Buffer) -> Vec<Record> {
    let mut out = Vec::new();
    let mut pos = Pos::default();
    while let Some((p, avail)) = b.readable(pos) {
        let data = read_at(b, p, avail).expect("read");
        let mut at = 0;
        while let Decoded::Record(r, n) = decode(&data[at..]) {
            out.push(r);
            at += n;
        }
        pos = Pos {
            segment: p.segment,
            offset: p.offset + at as u64,
        };
        if at == 0 {
            break;
        }
    }
    out
}

#[test]
fn records_round_trip_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Arc::new(Counters::default());
    let (b, mut w) = Buffer::open(dir.path(), 1 << 20, c.clone()).expect("open");
    let recs: Vec<Record> = (0..50).map(|i| rec(i, 100)).collect();
    assert_eq!(w.append(&recs).expect("append"), 0);
    assert_eq!(read_all(&b), recs);
    assert_eq!(
        c.buffered_events.load(std::sync::atomic::Ordering::Relaxed),
        50
    );
    drop((b, w));
    // A restart: nothing was acknowledged, everything is there again.
    let (b, _w) = Buffer::open(dir.path(), 1 << 20, c.clone()).expect("reopen");
    assert_eq!(read_all(&b), recs);
    assert_eq!(
        c.buffer_damaged.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn past_the_maximum_records_are_dropped_and_acks_free_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Arc::new(Counters::default());
    let (b, mut w) = Buffer::open(dir.path(), 8192, c).expect("open");
    let recs: Vec<Record> = (0..20).map(|i| rec(i, 1000)).collect();
    let dropped = w.append(&recs).expect("append");
    let kept = read_all(&b);
    assert_eq!(kept.len() as u64 + dropped, 20);
    assert!(dropped > 0 && !kept.is_empty());
    // Acknowledge everything: segments are deleted (the open one stays), room again.
    let mut end = Pos::default();
    while let Some((p, n)) = b.readable(end) {
        end = Pos {
            segment: p.segment,
            offset: p.offset + n,
        };
    }
    let bytes: u64 = kept.iter().map(|r| r.encoded_len() as u64).sum();
    b.acked(end, bytes, kept.len() as u64);
    assert_eq!(w.append(&recs[..1]).expect("append"), 0);
}

#[test]
fn a_damaged_segment_is_counted_and_cut_never_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Arc::new(Counters::default());
    let (b, mut w) = Buffer::open(dir.path(), 1 << 20, c.clone()).expect("open");
    let recs: Vec<Record> = (0..10).map(|i| rec(i, 10)).collect();
    w.append(&recs).expect("append");
    let path = b.path_of(1);
    drop((b, w));
    // Flip a byte inside the 4th record's payload, and tear the tail.
    let mut data = std::fs::read(&path).expect("read");
    let one = recs[0].encoded_len();
    data[3 * one + one - 2] ^= 0xff;
    data.extend_from_slice(&[MAGIC, 200, 0]);
    std::fs::write(&path, data).expect("write");
    let (b, _w) = Buffer::open(dir.path(), 1 << 20, c.clone()).expect("reopen");
    assert_eq!(read_all(&b), recs[..3].to_vec());
    assert_eq!(
        c.buffer_damaged.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Garbage of every kind decodes to damage or short, never a panic.
    for junk in [&[][..], &[MAGIC][..], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10][..]] {
        assert!(!matches!(decode(junk), Decoded::Record(..)));
    }
    let mut forged = vec![MAGIC];
    forged.extend_from_slice(&4u32.to_le_bytes());
    let body = [0xff, 0xff, 0, 0];
    forged.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    forged.extend_from_slice(&body);
    assert!(matches!(decode(&forged), Decoded::Damaged(_)));
}
