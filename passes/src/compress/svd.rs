//! The thin singular value decomposition `A = U diag(s) Vᵀ` of a dense
//! `f64` matrix, for low-rank factorization (`lowrank`): the truncated
//! SVD is the best rank-`r` approximation in the Frobenius norm, and the
//! singular values say how much of the weight each rank keeps
//! ([`rank_for_energy`]).
//!
//! Method: the eigen-decomposition of the smaller Gram matrix (`AᵀA` of a
//! tall matrix, `AAᵀ` of a wide one, by transposing), by Householder
//! reduction to tridiagonal form and the implicit QL algorithm (EISPACK's
//! `tred2`/`tql2`, as JAMA writes them), then `σᵢ = ‖A vᵢ‖` and
//! `uᵢ = A vᵢ / σᵢ`. Cyclic or one-sided Jacobi would be simpler and more
//! accurate for tiny singular values, but needs `O(m·n²)` work per sweep
//! and several sweeps: by estimate seconds for a `784×512` dense weight
//! and half a minute for a `1600×1024` one, where this takes about 0.2 s
//! and 2 s of one core (`svd_timing`, release). Every loop here runs over
//! contiguous rows (the eigenvectors are kept as rows), and QL's
//! rotations are applied to a band of columns at a time, in cache
//! (`rotate_rows`).
//!
//! Accuracy: `U diag(s) Vᵀ` reconstructs `A` to about `ε·σ₁` (the columns
//! `A vᵢ` are exact, only their lengths are split off); `V` is orthonormal
//! to rounding; a singular value is accurate to about `ε·σ₁²/σᵢ` (the
//! Gram matrix squares the condition), so values far below `√ε·σ₁` are
//! noise, which never matters for truncation. `U`'s columns for small
//! `σᵢ` (below `1e-4·σ₁`) are re-orthogonalized against the larger ones
//! (which moves their terms by about `ε·σ₁²/σᵢ`, at most `√ε·σ₁`), and
//! those of a zero `σᵢ` (a rank-deficient matrix) are completed to an
//! orthonormal basis.

/// A thin SVD of an `m×n` matrix, `k = min(m, n)`, all row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Svd {
    /// `m×k`, orthonormal columns.
    pub u: Vec<f64>,
    /// `k` singular values, descending, non-negative.
    pub s: Vec<f64>,
    /// `k×n`, orthonormal rows.
    pub vt: Vec<f64>,
}

/// The thin SVD of the row-major `m×n` matrix `a` (finite values; see the
/// module docs for the accuracy). An empty matrix has an empty SVD.
///
/// # Panics
/// If `a` does not hold `m·n` values.
pub fn svd(a: &[f64], m: usize, n: usize) -> Svd {
    assert_eq!(
        a.len(),
        m * n,
        "svd: a {m}×{n} matrix needs {} values",
        m * n
    );
    if m == 0 || n == 0 {
        return Svd {
            u: Vec::new(),
            s: Vec::new(),
            vt: Vec::new(),
        };
    }
    if m >= n {
        return tall(a, m, n);
    }
    // A = (Aᵀ)ᵀ = (U' S V'ᵀ)ᵀ = V' S U'ᵀ.
    let t = tall(&transpose(a, m, n), n, m);
    Svd {
        u: transpose(&t.vt, m, m),
        s: t.s,
        vt: transpose(&t.u, n, m),
    }
}

/// The smallest `r` whose leading singular values hold at least the
/// fraction `energy` of `Σ sᵢ²` (the squared Frobenius norm): `1` for an
/// `energy` of 0 or below, or for a zero matrix; `s.len()` for 1 or above.
/// `s` is descending, as [`svd`] returns it.
pub fn rank_for_energy(s: &[f64], energy: f64) -> usize {
    if s.is_empty() {
        return 0;
    }
    let total: f64 = s.iter().map(|v| v * v).sum();
    if energy >= 1.0 {
        return s.len();
    }
    if total <= 0.0 || energy <= 0.0 {
        return 1;
    }
    let want = energy * total;
    let mut kept = 0.0;
    for (i, v) in s.iter().enumerate() {
        kept += v * v;
        if kept >= want {
            return i + 1;
        }
    }
    s.len()
}

/// The SVD of a tall (or square) matrix, `m ≥ n ≥ 1`.
fn tall(a: &[f64], m: usize, n: usize) -> Svd {
    let at = transpose(a, m, n);
    // The Gram matrix AᵀA (n×n): dot products of the columns of A.
    let mut gram = vec![0.0; n * n];
    for i0 in (0..n).step_by(4) {
        let rows: Vec<&[f64]> = (i0..(i0 + 4).min(n))
            .map(|i| &at[i * m..(i + 1) * m])
            .collect();
        for j in i0..n {
            let sums = dots(&rows, &at[j * m..(j + 1) * m]);
            for (i, v) in (i0..i0 + rows.len()).zip(sums) {
                gram[i * n + j] = v;
                gram[j * n + i] = v;
            }
        }
    }
    // Rows of `z` are the eigenvectors.
    let (_, z) = symmetric_eigen(gram, n);
    // Row i of `b` is A vᵢ (length m): the dot products of vᵢ with A's rows.
    let mut b = vec![0.0; n * m];
    for i0 in (0..n).step_by(4) {
        let vs: Vec<&[f64]> = (i0..(i0 + 4).min(n))
            .map(|i| &z[i * n..(i + 1) * n])
            .collect();
        for r in 0..m {
            let sums = dots(&vs, &a[r * n..(r + 1) * n]);
            for (i, v) in (i0..i0 + vs.len()).zip(sums) {
                b[i * m + r] = v;
            }
        }
    }
    let norms: Vec<f64> = b.chunks_exact(m).map(|c| dot(c, c).sqrt()).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| norms[y].total_cmp(&norms[x]).then(x.cmp(&y)));
    let s: Vec<f64> = order.iter().map(|&i| norms[i]).collect();
    let s1 = s[0];
    // Below this a column's direction is noise: complete the basis.
    let floor = s1 * f64::EPSILON * (m.max(n) as f64) * 16.0;
    // Below this, uᵢ = A vᵢ / σᵢ loses orthogonality (≈ ε·σ₁²/σᵢ²).
    let reorth = s1 * 1e-4;
    let mut ucols = vec![0.0; n * m];
    let mut next_unit = 0;
    for (k, &i) in order.iter().enumerate() {
        let (done, rest) = ucols.split_at_mut(k * m);
        let col = &mut rest[..m];
        if s[k] > floor {
            for (c, &v) in col.iter_mut().zip(&b[i * m..(i + 1) * m]) {
                *c = v / s[k];
            }
            if s[k] < reorth {
                orthogonalize(col, done, m);
            }
        } else {
            // A direction orthogonal to the columns so far: the first unit
            // vector with a large part outside their span (one exists
            // among any k + 1 of them, as k < m columns span < m dims).
            loop {
                col.iter_mut().for_each(|c| *c = 0.0);
                col[next_unit % m] = 1.0;
                next_unit += 1;
                if orthogonalize(col, done, m) > 0.5 || next_unit > 2 * m {
                    break;
                }
            }
        }
    }
    let vt = order
        .iter()
        .flat_map(|&i| z[i * n..(i + 1) * n].iter().copied())
        .collect();
    Svd {
        u: transpose(&ucols, n, m),
        s,
        vt,
    }
}

/// Makes `col` orthogonal to the `done.len() / m` orthonormal columns in
/// `done` (two passes of modified Gram-Schmidt) and normalizes it;
/// returns the norm it had after the first projection (relative to 1).
fn orthogonalize(col: &mut [f64], done: &[f64], m: usize) -> f64 {
    let before = dot(col, col).sqrt();
    let mut after_first = 0.0;
    for pass in 0..2 {
        for q in done.chunks_exact(m) {
            let p = dot(col, q);
            for (c, &v) in col.iter_mut().zip(q) {
                *c -= p * v;
            }
        }
        let norm = dot(col, col).sqrt();
        if pass == 0 {
            after_first = if before > 0.0 { norm / before } else { 0.0 };
        }
        if norm > 0.0 {
            col.iter_mut().for_each(|c| *c /= norm);
        }
    }
    after_first
}

/// The eigenvalues and eigenvectors (as the rows of an `n×n` matrix) of
/// the symmetric `n×n` matrix `a`, unsorted.
fn symmetric_eigen(a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut t = a;
    let mut d = vec![0.0; n];
    let mut e = vec![0.0; n];
    tred2(&mut t, &mut d, &mut e, n);
    tql2(&mut t, &mut d, &mut e, n);
    (d, t)
}

/// Householder reduction of the symmetric matrix in `t` to tridiagonal
/// form (diagonal `d`, subdiagonal `e[1..]`), accumulating the orthogonal
/// transformation in `t`. JAMA's `tred2` on the transpose of its `V`, so
/// that its inner loops run along rows: `t[j][k]` is JAMA's `V[k][j]`.
fn tred2(t: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) {
    let at = |j: usize, k: usize| j * n + k;
    for j in 0..n {
        d[j] = t[at(j, n - 1)];
    }
    for i in (1..n).rev() {
        let scale: f64 = d[..i].iter().map(|v| v.abs()).sum();
        let mut h = 0.0;
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = t[at(j, i - 1)];
                t[at(j, i)] = 0.0;
                t[at(i, j)] = 0.0;
            }
        } else {
            for dk in d[..i].iter_mut() {
                *dk /= scale;
                h += *dk * *dk;
            }
            let f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            e[..i].iter_mut().for_each(|v| *v = 0.0);
            for j in 0..i {
                let f = d[j];
                t[at(i, j)] = f;
                let row = &t[at(j, 0)..at(j, n)];
                let mut g = e[j] + row[j] * f;
                for k in j + 1..i {
                    g += row[k] * d[k];
                    e[k] += row[k] * f;
                }
                e[j] = g;
            }
            let mut f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                let (f, g) = (d[j], e[j]);
                let row = &mut t[at(j, 0)..at(j, n)];
                for k in j..i {
                    row[k] -= f * e[k] + g * d[k];
                }
                d[j] = row[i - 1];
                row[i] = 0.0;
            }
        }
        d[i] = h;
    }
    // Accumulate the transformations.
    for i in 0..n - 1 {
        t[at(i, n - 1)] = t[at(i, i)];
        t[at(i, i)] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = t[at(i + 1, k)] / h;
            }
            let (head, tail) = t.split_at_mut(at(i + 1, 0));
            let next = &tail[..=i];
            for j in 0..=i {
                let row = &mut head[at(j, 0)..at(j, 0) + i + 1];
                let g = dot(next, row);
                for (r, &dk) in row.iter_mut().zip(&d[..=i]) {
                    *r -= g * dk;
                }
            }
        }
        for k in 0..=i {
            t[at(i + 1, k)] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = t[at(j, n - 1)];
        t[at(j, n - 1)] = 0.0;
    }
    t[at(n - 1, n - 1)] = 1.0;
    e[0] = 0.0;
}

/// The implicit QL algorithm on the tridiagonal `d`, `e` from [`tred2`]:
/// `d` becomes the eigenvalues, the rows of `t` the eigenvectors. JAMA's
/// `tql2` (on rows, as `tred2` above), without its final sort, its
/// rotations of `t` deferred ([`rotate_rows`]).
fn tql2(t: &mut [f64], d: &mut [f64], e: &mut [f64], n: usize) {
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let mut f = 0.0;
    let mut tst1: f64 = 0.0;
    let eps = f64::EPSILON;
    let mut rotations = Vec::new();
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            // Convergence is quadratic and takes a few iterations; the cap
            // only guards against non-finite input.
            for _ in 0..64 {
                let g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let mut h = g - d[l];
                for di in d[l + 2..].iter_mut() {
                    *di -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0, 1.0, 1.0);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0, 0.0);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    let g = c * e[i];
                    h = c * p;
                    r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    rotations.push(Rotation { row: i, c, s });
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
        if rotations.len() >= PENDING {
            rotate_rows(t, n, &rotations);
            rotations.clear();
        }
    }
    rotate_rows(t, n, &rotations);
}

/// A plane rotation of rows `row` and `row + 1` of the eigenvectors.
struct Rotation {
    row: usize,
    c: f64,
    s: f64,
}

/// How many rotations [`tql2`] keeps before it applies them (few in a
/// debug build, so that tests apply them in several batches).
const PENDING: usize = if cfg!(debug_assertions) { 64 } else { 1 << 18 };

/// Columns of the eigenvectors that [`rotate_rows`] rotates at a time:
/// 64 of each of 1024 rows are 512 KiB, which stay in a core's L2 cache
/// while a sweep of rotations passes over them.
const COLUMNS: usize = 64;

/// Applies `rotations` in order to the `n×n` matrix `t`. The rotations of
/// QL depend only on the tridiagonal matrix, never on `t`, so they are
/// recorded and applied to a band of columns at a time: each sweep then
/// moves rows of the band through the cache instead of the whole matrix
/// through memory (the difference between seconds and a fraction of one
/// for a `1024×1024` Gram matrix).
fn rotate_rows(t: &mut [f64], n: usize, rotations: &[Rotation]) {
    for start in (0..n).step_by(COLUMNS) {
        let end = (start + COLUMNS).min(n);
        for &Rotation { row, c, s } in rotations {
            let (lo, hi) = t.split_at_mut((row + 1) * n);
            let ri = &mut lo[row * n + start..row * n + end];
            let ri1 = &mut hi[start..end];
            for (a, b) in ri.iter_mut().zip(ri1.iter_mut()) {
                let h = *b;
                *b = s * *a + c * h;
                *a = c * *a - s * h;
            }
        }
    }
}

/// `x · y` with four running sums (so the loop vectorizes).
fn dot(x: &[f64], y: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (xc, yc) = (x.chunks_exact(4), y.chunks_exact(4));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for l in 0..4 {
            acc[l] += a[l] * b[l];
        }
    }
    let tail: f64 = xr.iter().zip(yr).map(|(a, b)| a * b).sum();
    (acc[0] + acc[2]) + (acc[1] + acc[3]) + tail
}

/// The dot products of up to four rows `xs` with `y`, reading `y` once
/// (the rows past `xs.len()` are 0).
fn dots(xs: &[&[f64]], y: &[f64]) -> [f64; 4] {
    if xs.len() < 4 {
        let mut out = [0.0; 4];
        for (o, x) in out.iter_mut().zip(xs) {
            *o = dot(x, y);
        }
        return out;
    }
    let (x0, x1, x2, x3) = (xs[0], xs[1], xs[2], xs[3]);
    let mut acc = [[0.0f64; 2]; 4];
    let pairs = y.len() / 2;
    for p in 0..pairs {
        let (k, l) = (2 * p, 2 * p + 1);
        let (y0, y1) = (y[k], y[l]);
        acc[0][0] += x0[k] * y0;
        acc[0][1] += x0[l] * y1;
        acc[1][0] += x1[k] * y0;
        acc[1][1] += x1[l] * y1;
        acc[2][0] += x2[k] * y0;
        acc[2][1] += x2[l] * y1;
        acc[3][0] += x3[k] * y0;
        acc[3][1] += x3[l] * y1;
    }
    let mut out = acc.map(|a| a[0] + a[1]);
    if y.len() % 2 == 1 {
        let k = y.len() - 1;
        for (o, x) in out.iter_mut().zip([x0, x1, x2, x3]) {
            *o += x[k] * y[k];
        }
    }
    out
}

/// The transpose of a row-major `m×n` matrix.
fn transpose(a: &[f64], m: usize, n: usize) -> Vec<f64> {
    let mut t = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            t[j * m + i] = a[i * n + j];
        }
    }
    t
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// SplitMix64, uniform in `[-1, 1)`.
    pub(crate) fn random(n: usize, seed: u64) -> Vec<f64> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for p in 0..k {
                for j in 0..n {
                    c[i * n + j] += a[i * k + p] * b[p * n + j];
                }
            }
        }
        c
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    }

    /// `U diag(s) Vᵀ`.
    fn reconstruct(d: &Svd, m: usize, n: usize) -> Vec<f64> {
        let k = d.s.len();
        let mut us = d.u.clone();
        for i in 0..m {
            for j in 0..k {
                us[i * k + j] *= d.s[j];
            }
        }
        matmul(&us, &d.vt, m, k, n)
    }

    /// Checks everything an SVD promises, to `tol`.
    fn check(a: &[f64], m: usize, n: usize, tol: f64) -> Svd {
        let d = svd(a, m, n);
        let k = m.min(n);
        assert_eq!((d.u.len(), d.s.len(), d.vt.len()), (m * k, k, k * n));
        let err = max_diff(&reconstruct(&d, m, n), a);
        assert!(err < tol, "{m}×{n}: reconstruction error {err}");
        assert!(d.s.windows(2).all(|w| w[0] >= w[1]), "{:?}", d.s);
        assert!(d.s.iter().all(|&v| v >= 0.0));
        let eye: Vec<f64> = (0..k * k)
            .map(|i| if i / k == i % k { 1.0 } else { 0.0 })
            .collect();
        let utu = matmul(&transpose(&d.u, m, k), &d.u, k, m, k);
        let err = max_diff(&utu, &eye);
        assert!(err < tol, "{m}×{n}: UᵀU is off the identity by {err}");
        let vvt = matmul(&d.vt, &transpose(&d.vt, k, n), k, n, k);
        let err = max_diff(&vvt, &eye);
        assert!(err < tol, "{m}×{n}: VᵀV is off the identity by {err}");
        d
    }

    #[test]
    fn random_matrices_reconstruct() {
        for (seed, &(m, n)) in [(1, 1), (1, 5), (5, 1), (7, 7), (40, 13), (13, 40), (64, 64)]
            .iter()
            .enumerate()
        {
            check(&random(m * n, seed as u64), m, n, 1e-9);
        }
    }

    #[test]
    fn rank_deficient_matrices_reconstruct_with_zero_singular_values() {
        // A 30×20 matrix of rank 3, and its transpose.
        let (m, n, r) = (30, 20, 3);
        let a = matmul(&random(m * r, 11), &random(r * n, 12), m, r, n);
        for (a, m, n) in [(a.clone(), m, n), (transpose(&a, m, n), n, m)] {
            let d = check(&a, m, n, 1e-9);
            assert!(d.s[r - 1] > 0.1, "{:?}", d.s);
            assert!(d.s[r..].iter().all(|&v| v < 1e-9), "{:?}", d.s);
        }
        // A zero matrix, and one with zero columns.
        let d = check(&[0.0; 12], 4, 3, 1e-12);
        assert_eq!(d.s, [0.0; 3]);
        let mut a = random(24, 13);
        for row in a.chunks_exact_mut(4) {
            row[1] = 0.0;
            row[3] = 0.0;
        }
        let d = check(&a, 6, 4, 1e-9);
        assert!(
            d.s[1] > 1e-3 && d.s[2] < 1e-12 && d.s[3] < 1e-12,
            "{:?}",
            d.s
        );
    }

    #[test]
    fn graded_singular_values_come_back() {
        // A = Q₁ diag(s) Q₂ᵀ with orthonormal Q₁ (40×6), Q₂ (6×6): three
        // singular values under 1e-4·σ₁, whose columns of U are
        // re-orthogonalized.
        let s = [3.0, 1.0, 1e-2, 1e-5, 1e-6, 0.0];
        let q1 = svd(&random(40 * 6, 21), 40, 6).u;
        let q2t = svd(&random(36, 22), 6, 6).vt;
        let mut scaled = q1.clone();
        for (i, v) in scaled.iter_mut().enumerate() {
            *v *= s[i % 6];
        }
        let a = matmul(&scaled, &q2t, 40, 6, 6);
        let d = check(&a, 40, 6, 1e-9);
        assert!(max_diff(&d.s, &s) < 1e-9, "{:?}", d.s);
        let d = check(&transpose(&a, 40, 6), 6, 40, 1e-9);
        assert!(max_diff(&d.s, &s) < 1e-9, "{:?}", d.s);
    }

    #[test]
    fn known_decompositions() {
        // diag(1, -3, 2): singular values 3, 2, 1, the sign in U or V.
        let a = [1.0, 0.0, 0.0, 0.0, -3.0, 0.0, 0.0, 0.0, 2.0];
        let d = check(&a, 3, 3, 1e-12);
        assert!(max_diff(&d.s, &[3.0, 2.0, 1.0]) < 1e-12, "{:?}", d.s);
        let (u0, v0) = (d.u[3], d.vt[1]);
        assert!((u0 * v0 + 1.0).abs() < 1e-12, "u₀ ∥ e₁, v₀ ∥ e₁, u₀v₀ = -1");
        // x yᵀ has one singular value ‖x‖‖y‖ with x/‖x‖ and y/‖y‖.
        let (x, y) = ([1.0, 2.0, 2.0], [3.0, 0.0, 4.0, 0.0]);
        let a: Vec<f64> = x
            .iter()
            .flat_map(|&p| y.iter().map(move |&q| p * q))
            .collect();
        let d = check(&a, 3, 4, 1e-12);
        assert!((d.s[0] - 15.0).abs() < 1e-12 && d.s[1] < 1e-12, "{:?}", d.s);
        let sign = d.u[0].signum();
        for (i, xi) in x.iter().enumerate() {
            assert!((d.u[i * 3] - sign * xi / 3.0).abs() < 1e-12);
        }
        for (vj, yj) in d.vt.iter().zip(&y) {
            assert!((vj - sign * yj / 5.0).abs() < 1e-12);
        }
        // Repeated singular values: any orthonormal basis of the block.
        let a = [2.0, 0.0, 0.0, 2.0, 0.0, 0.0];
        let d = check(&a, 3, 2, 1e-12);
        assert!(max_diff(&d.s, &[2.0, 2.0]) < 1e-12);
        assert_eq!(svd(&[], 0, 3).s, Vec::<f64>::new());
    }

    #[test]
    fn energy_picks_the_smallest_rank_that_holds_it() {
        // Squares 16, 9, 4, 1 of 30.
        let s = [4.0, 3.0, 2.0, 1.0];
        assert_eq!(rank_for_energy(&s, 0.0), 1);
        assert_eq!(rank_for_energy(&s, -1.0), 1);
        assert_eq!(rank_for_energy(&s, 16.0 / 30.0), 1, "exactly reached");
        assert_eq!(rank_for_energy(&s, 0.54), 2);
        assert_eq!(rank_for_energy(&s, 25.0 / 30.0), 2);
        assert_eq!(rank_for_energy(&s, 0.9), 3);
        assert_eq!(rank_for_energy(&s, 0.99), 4);
        assert_eq!(rank_for_energy(&s, 1.0), 4);
        assert_eq!(rank_for_energy(&s, 2.0), 4);
        assert_eq!(rank_for_energy(&[0.0, 0.0], 0.9), 1, "a zero matrix");
        assert_eq!(rank_for_energy(&[5.0, 0.0, 0.0], 1.0 - 1e-12), 1);
        assert_eq!(rank_for_energy(&[], 0.5), 0);
    }

    /// Nanoseconds this thread has run (Linux), which a busy machine
    /// inflates less than the wall clock.
    fn on_cpu() -> Option<u64> {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
        stat.split_whitespace().next()?.parse().ok()
    }

    /// `cargo test -p nnc-passes --release -- --ignored --nocapture svd_timing`
    #[test]
    #[ignore]
    fn svd_timing() {
        for (m, n) in [(784, 512), (1600, 1024), (512, 784)] {
            let a = random(m * n, 3);
            let (start, cpu) = (std::time::Instant::now(), on_cpu());
            let d = svd(&a, m, n);
            let (took, cpu) = (start.elapsed(), on_cpu().zip(cpu).map(|(b, a)| b - a));
            let err = max_diff(&reconstruct(&d, m, n), &a);
            let cpu = cpu.map_or("?".into(), |ns| format!("{:.2}s", ns as f64 * 1e-9));
            println!("svd {m}×{n}: {took:.2?} ({cpu} on the CPU), reconstruction error {err:.1e}");
        }
    }
}
