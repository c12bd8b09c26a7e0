//! Thrift's compact protocol, read as far as slope needs it: the page headers of the page path
//! (`pages.rs`) and the row-group list of a footer (`dataset.rs`), and the varint that wraps a
//! lone row group into a footer again. The parquet crate parses both too, but keeps its readers
//! private.

// Thrift compact protocol type codes.
pub(crate) const TRUE: u8 = 1;
pub(crate) const FALSE: u8 = 2;
pub(crate) const I32: u8 = 5;
pub(crate) const LIST: u8 = 9;
pub(crate) const STRUCT: u8 = 12;

/// A reader of Thrift's compact protocol, as far as page headers and footers need it.
pub(crate) struct Compact<'a> {
    pub bytes: &'a [u8],
    /// The offset of the next byte to read.
    pub at: usize,
}

impl Compact<'_> {
    pub fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    pub fn varint(&mut self) -> Option<u64> {
        let (value, used) = uleb128(self.bytes.get(self.at..)?)?;
        self.at += used;
        Some(value)
    }

    pub fn i32(&mut self) -> Option<i32> {
        let v = self.varint()?;
        i32::try_from((v >> 1) as i64 ^ -((v & 1) as i64)).ok()
    }

    /// The next field's type and id, `None` at the end of the struct (`Some` wraps parse
    /// success). `last` is the previous field's id, from which ids are deltas.
    pub fn field(&mut self, last: &mut i16) -> Option<Option<(u8, i16)>> {
        let b = self.byte()?;
        if b == 0 {
            return Some(None);
        }
        let delta = i16::from(b >> 4);
        let id = if delta == 0 {
            let v = self.varint()?;
            i16::try_from((v >> 1) as i64 ^ -((v & 1) as i64)).ok()?
        } else {
            last.checked_add(delta)?
        };
        *last = id;
        Some(Some((b & 0x0F, id)))
    }

    /// Skips one element of a list, set or map: as [`Compact::skip`], except that a boolean
    /// element, unlike a boolean field, takes a byte.
    pub fn skip_element(&mut self, kind: u8, depth: usize) -> Option<()> {
        if kind == TRUE || kind == FALSE { self.byte().map(drop) } else { self.skip(kind, depth) }
    }

    /// Skips one field's value of type `kind`; `depth` bounds the nesting of damaged input.
    pub fn skip(&mut self, kind: u8, depth: usize) -> Option<()> {
        if depth > 16 {
            return None;
        }
        match kind {
            // A boolean field's value is its type code.
            TRUE | FALSE => {}
            3 => self.at += 1,
            4..=6 => {
                self.varint()?;
            }
            7 => self.at += 8,
            8 => {
                let len = usize::try_from(self.varint()?).ok()?;
                self.at = self.at.checked_add(len)?;
            }
            9 | 10 => {
                let head = self.byte()?;
                let len = match head >> 4 {
                    15 => usize::try_from(self.varint()?).ok()?,
                    n => usize::from(n),
                };
                for _ in 0..len {
                    self.skip_element(head & 0x0F, depth + 1)?;
                }
            }
            11 => {
                let len = self.varint()?;
                if len > 0 {
                    let types = self.byte()?;
                    for _ in 0..len {
                        self.skip_element(types >> 4, depth + 1)?;
                        self.skip_element(types & 0x0F, depth + 1)?;
                    }
                }
            }
            STRUCT => {
                let mut last = 0;
                while let Some((kind, _)) = self.field(&mut last)? {
                    self.skip(kind, depth + 1)?;
                }
            }
            _ => return None,
        }
        (self.at <= self.bytes.len()).then_some(())
    }
}

/// Appends `v` as an unsigned LEB128 number, the compact protocol's varint.
pub(crate) fn write_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// An unsigned LEB128 number and the bytes it took.
pub(crate) fn uleb128(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().take(10).enumerate() {
        value |= u64::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}
