//! The work arena: buffers placed first-fit in order of birth, each freed
//! after its last reader, and the live-set bound no placement can beat.

use super::{Buffer, ALIGN};

/// First-fit allocation in order of birth; a buffer is freed after its
/// last reader, so a kernel's results never alias its operands. Returns
/// the bytes without reuse and the arena size.
/// The most bytes of buffers live at once: buffer `b` is live from the
/// kernel that writes it (`born`) through its last reader (`last_use`).
/// No placement of the buffers in one arena can be smaller.
pub(crate) fn live_set_bound(buffers: &[Buffer], born: &[usize], last_use: &[usize]) -> usize {
    // (time, kind, bytes): a birth (0) at `born`, a death (-1) just after
    // the last use, deaths first within a time (a buffer born at another's
    // last use overlaps it: that one dies only at the next time).
    let mut events: Vec<(usize, i8, usize)> = Vec::with_capacity(2 * buffers.len());
    for (b, buf) in buffers.iter().enumerate() {
        events.push((born[b], 0, buf.bytes));
        events.push((last_use[b] + 1, -1, buf.bytes));
    }
    events.sort_unstable_by_key(|&(t, kind, _)| (t, kind));
    let (mut live, mut most) = (0usize, 0usize);
    for (_, kind, bytes) in events {
        if kind == 0 {
            live += bytes;
            most = most.max(live);
        } else {
            live -= bytes;
        }
    }
    most
}

pub(crate) fn allocate(
    buffers: &mut [Buffer],
    born: &[usize],
    last_use: &[usize],
) -> (usize, usize) {
    let unshared_bytes = buffers.iter().map(|b| b.bytes).sum();
    let mut free: Vec<(usize, usize)> = Vec::new(); // (offset, bytes), sorted by offset
    let mut top = 0usize;
    let mut by_birth: Vec<usize> = (0..buffers.len()).collect();
    by_birth.sort_by_key(|&b| (born[b], b));
    let mut live: Vec<usize> = Vec::new();
    for &b in &by_birth {
        // Release buffers whose last reader ran before this one is written.
        live.retain(|&l| {
            if last_use[l] < born[b] {
                release(&mut free, buffers[l].offset, buffers[l].bytes);
                false
            } else {
                true
            }
        });
        let bytes = buffers[b].bytes;
        if bytes == 0 {
            continue;
        }
        buffers[b].offset = match free.iter().position(|&(_, n)| n >= bytes) {
            Some(i) => {
                let (off, n) = free[i];
                if n == bytes {
                    free.remove(i);
                } else {
                    free[i] = (off + bytes, n - bytes);
                }
                off
            }
            None => {
                let off = top;
                top += bytes;
                off
            }
        };
        live.push(b);
    }
    (unshared_bytes, top.max(ALIGN))
}

/// Returns a range to the free list, merging with its neighbours.
pub(crate) fn release(free: &mut Vec<(usize, usize)>, offset: usize, bytes: usize) {
    let i = free.partition_point(|&(o, _)| o < offset);
    free.insert(i, (offset, bytes));
    if i + 1 < free.len() && free[i].0 + free[i].1 == free[i + 1].0 {
        free[i].1 += free[i + 1].1;
        free.remove(i + 1);
    }
    if i > 0 && free[i - 1].0 + free[i - 1].1 == free[i].0 {
        free[i - 1].1 += free[i].1;
        free.remove(i);
    }
}

#[cfg(test)]
mod live_set_tests {
    use super::*;

    #[test]
    fn the_bound_is_the_largest_overlap() {
        let buffers: Vec<Buffer> = [100, 50, 30, 200]
            .iter()
            .map(|&bytes| Buffer { bytes, offset: 0 })
            .collect();
        // Live: 0 in [0, 1], 1 in [1, 2], 2 in [2, 3], 3 in [4, 4].
        let (born, last_use) = ([0, 1, 2, 4], [1, 2, 3, 4]);
        assert_eq!(live_set_bound(&buffers, &born, &last_use), 200);
        let mut placed = buffers.clone();
        let (_, arena) = allocate(&mut placed, &born, &last_use);
        assert!(arena >= 200);
        // Without the big one: the overlap of 0 and 1.
        assert_eq!(
            live_set_bound(&buffers[..3], &born[..3], &last_use[..3]),
            150
        );
    }
}
