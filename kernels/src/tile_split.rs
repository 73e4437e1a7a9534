//! How a packed GEMM (`sgemm`, `igemm`) shares its product among threads:
//! one contiguous run of whole register tiles of `c`'s columns (or rows)
//! per thread, as even as the tiles allow. Each kernel decides columns or
//! rows by its own measurements; the arithmetic of the split is here.

/// The busiest thread's share of `len` elements cut into `unit`-wide
/// tiles among `threads`, against an even split (1.0 is even: 100 columns
/// in 32-wide tiles over 2 threads give 64 + 36, 1.28).
pub(crate) fn worst_share(len: usize, unit: usize, threads: usize) -> f64 {
    let per = len.div_ceil(unit).div_ceil(threads) * unit;
    per.min(len) as f64 * threads as f64 / len as f64
}

/// A product `c[m × n] = a @ b` cut among `threads` tasks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TileSplit {
    by_columns: bool,
    m: usize,
    n: usize,
    unit: usize,
    threads: usize,
}

/// One task's block: its rows and columns of `c`, and where it starts in
/// `c`, `a` and `b` (element offsets from their `[0, 0]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Block {
    pub rows: usize,
    pub cols: usize,
    pub c_at: isize,
    pub a_at: isize,
    pub b_at: isize,
}

impl TileSplit {
    /// By `c`'s columns in tiles of `nr`, or by its rows in tiles of `mr`.
    pub(crate) fn new(
        by_columns: bool,
        (m, n): (usize, usize),
        (mr, nr): (usize, usize),
        threads: usize,
    ) -> TileSplit {
        let unit = if by_columns { nr } else { mr };
        TileSplit {
            by_columns,
            m,
            n,
            unit,
            threads,
        }
    }

    /// Task `t`'s block for these strides (`c`'s row and column strides,
    /// `a`'s row stride, `b`'s column stride); `None` when it has nothing.
    pub(crate) fn block(
        &self,
        t: usize,
        (c_rs, c_cs): (isize, isize),
        a_rs: isize,
        b_cs: isize,
    ) -> Option<Block> {
        let len = if self.by_columns { self.n } else { self.m };
        let tiles = len.div_ceil(self.unit);
        let start = (tiles * t / self.threads * self.unit).min(len);
        let end = (tiles * (t + 1) / self.threads * self.unit).min(len);
        if start >= end {
            return None;
        }
        let s = start as isize;
        Some(match self.by_columns {
            true => Block {
                rows: self.m,
                cols: end - start,
                c_at: s * c_cs,
                a_at: 0,
                b_at: s * b_cs,
            },
            false => Block {
                rows: end - start,
                cols: self.n,
                c_at: s * c_rs,
                a_at: s * a_rs,
                b_at: 0,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_c_once_in_whole_tiles() {
        let split = TileSplit::new(true, (5, 100), (4, 32), 2);
        let b0 = split.block(0, (100, 1), 7, 1).unwrap();
        let b1 = split.block(1, (100, 1), 7, 1).unwrap();
        assert_eq!((b0.cols, b0.b_at, b1.cols, b1.c_at), (64, 0, 36, 64));
        assert!((worst_share(100, 32, 2) - 1.28).abs() < 1e-12);
        let split = TileSplit::new(false, (6, 3), (4, 32), 2);
        let b1 = split.block(1, (3, 1), 9, 1).unwrap();
        assert_eq!((b1.rows, b1.cols, b1.c_at, b1.a_at), (2, 3, 12, 36));
        // More threads than tiles: the extra tasks get nothing.
        assert_eq!(
            TileSplit::new(false, (4, 3), (4, 32), 2).block(0, (3, 1), 9, 1),
            None
        );
    }
}
