//! A borrowed, strided view of a matrix of 16-bit codes (so transposes and sub-blocks cost nothing).

use crate::AccelError;

/// `rows x cols` codes; element `(i, j)` is `data[i * row_stride + j * col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct CodeMatrix<'a> {
    data: &'a [i16],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> CodeMatrix<'a> {
    /// A strided view; fails when the last element lies outside `data`.
    pub fn new(
        data: &'a [i16],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Result<Self, AccelError> {
        let err = || AccelError::View {
            rows,
            cols,
            row_stride,
            col_stride,
            len: data.len(),
        };
        if rows > 0 && cols > 0 {
            let last = (rows - 1)
                .checked_mul(row_stride)
                .and_then(|r| {
                    (cols - 1)
                        .checked_mul(col_stride)
                        .and_then(|c| r.checked_add(c))
                })
                .ok_or_else(err)?;
            if last >= data.len() {
                return Err(err());
            }
        }
        Ok(CodeMatrix {
            data,
            rows,
            cols,
            rs: row_stride,
            cs: col_stride,
        })
    }

    /// A row-major view; `data.len()` must be exactly `rows * cols`.
    pub fn row_major(data: &'a [i16], rows: usize, cols: usize) -> Result<Self, AccelError> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(AccelError::View {
                rows,
                cols,
                row_stride: cols,
                col_stride: 1,
                len: data.len(),
            });
        }
        Ok(CodeMatrix {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn row_stride(&self) -> usize {
        self.rs
    }
    pub fn col_stride(&self) -> usize {
        self.cs
    }

    /// The underlying storage, starting at element (0, 0).
    pub(crate) fn data(&self) -> &'a [i16] {
        self.data
    }

    /// The transpose (a view; no copy).
    pub fn t(self) -> Self {
        CodeMatrix {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Element `(i, j)`. Panics when out of range (callers index within `rows x cols`).
    #[inline]
    pub fn get(&self, i: usize, j: usize) -> i16 {
        self.data[i * self.rs + j * self.cs]
    }

    /// The sub-block rows `r0..r1`, columns `c0..c1` (clamped to the matrix).
    pub fn sub(self, r0: usize, r1: usize, c0: usize, c1: usize) -> Self {
        let r1 = r1.min(self.rows);
        let c1 = c1.min(self.cols);
        let r0 = r0.min(r1);
        let c0 = c0.min(c1);
        let (rows, cols) = (r1 - r0, c1 - c0);
        let start = if rows > 0 && cols > 0 {
            r0 * self.rs + c0 * self.cs
        } else {
            0
        };
        CodeMatrix {
            data: &self.data[start..],
            rows,
            cols,
            rs: self.rs,
            cs: self.cs,
        }
    }

    /// Copy out as a row-major vector.
    pub fn to_row_major(&self) -> Vec<i16> {
        let mut v = Vec::with_capacity(self.rows * self.cols);
        for i in 0..self.rows {
            for j in 0..self.cols {
                v.push(self.get(i, j));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_transpose_and_sub() {
        let d: Vec<i16> = (0..12).collect();
        let m = CodeMatrix::row_major(&d, 3, 4).unwrap();
        assert_eq!(m.get(2, 1), 9);
        let t = m.t();
        assert_eq!((t.rows(), t.cols()), (4, 3));
        assert_eq!(t.get(1, 2), 9);
        let s = m.sub(1, 3, 2, 4);
        assert_eq!(s.to_row_major(), vec![6, 7, 10, 11]);
        assert_eq!(m.sub(1, 1, 0, 4).rows(), 0);
        assert!(CodeMatrix::row_major(&d, 3, 5).is_err());
        assert!(CodeMatrix::new(&d, 3, 4, 4, 2).is_err());
        assert!(CodeMatrix::new(&d, 3, 4, usize::MAX, 1).is_err());
        assert!(CodeMatrix::new(&d, 0, 4, 100, 1).is_ok());
    }
}
