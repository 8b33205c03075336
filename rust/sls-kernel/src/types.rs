//! The kernel's ground types, shared by every module and depending on none of them:
//! byte columns borrowed from the caller, how batch work runs, and the verdict on one item.
//!
//! They live here, not in `batch`, so the module graph has no circle: `batch` builds on
//! `mac`, `ocra` and `otp`, and they (like `card`, `challenge`, `activation` and `push`)
//! take these types from here, never from `batch`.

use subtle::Choice;

/// Whether batch work runs on the current rayon pool or on the calling thread alone.
/// Sequential work never touches a rayon pool, so it is safe anywhere (even after fork).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Execution {
    Sequential,
    Parallel,
}

/// The verdict on one item; the numbers are the values of the numpy result array.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Outcome {
    Ok = 0,
    Wrong = 1,
    Malformed = 2,
}

impl Outcome {
    #[inline]
    pub fn from_match(hit: Choice) -> Self {
        if bool::from(hit) {
            Outcome::Ok
        } else {
            Outcome::Wrong
        }
    }
}

/// A column of byte strings.
#[derive(Debug, Clone)]
pub enum ByteColumn<'a> {
    /// Row-major cells of `width` bytes. With `nul_padded`, trailing NULs are padding
    /// (numpy's `S` dtype), so a shorter value ends at its first trailing NUL.
    Fixed {
        data: &'a [u8],
        width: usize,
        nul_padded: bool,
    },
    /// One slice per row.
    Rows(Vec<&'a [u8]>),
}

impl<'a> ByteColumn<'a> {
    pub fn len(&self) -> usize {
        match self {
            ByteColumn::Fixed { data, width, .. } => {
                if *width == 0 {
                    0
                } else {
                    data.len() / width
                }
            }
            ByteColumn::Rows(rows) => rows.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub fn get(&self, row: usize) -> &'a [u8] {
        match self {
            ByteColumn::Fixed {
                data,
                width,
                nul_padded,
            } => {
                let cell = &data[row * width..(row + 1) * width];
                if *nul_padded {
                    let end = cell.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                    &cell[..end]
                } else {
                    cell
                }
            }
            ByteColumn::Rows(rows) => rows[row],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_padded_cells_end_at_the_padding() {
        let data = b"1234\x00\x00567890";
        let column = ByteColumn::Fixed {
            data,
            width: 6,
            nul_padded: true,
        };
        assert_eq!(column.len(), 2);
        assert_eq!(column.get(0), b"1234");
        assert_eq!(column.get(1), b"567890");
        let raw = ByteColumn::Fixed {
            data,
            width: 6,
            nul_padded: false,
        };
        assert_eq!(raw.get(0), b"1234\0\0");
    }
}
