//! Bounds-checked little-endian access to untrusted bytes. Every read of the image goes through
//! here, so no offset from the image can index out of bounds.

use crate::error::{RafsError, Result};

/// Take `len` bytes at `offset` of `data`, or a [`RafsError::Truncated`] naming `what`.
pub(crate) fn slice<'a>(data: &'a [u8], offset: u64, len: u64, what: &str) -> Result<&'a [u8]> {
    let end = offset.checked_add(len);
    match end {
        Some(end) if end <= data.len() as u64 => Ok(&data[offset as usize..end as usize]),
        _ => Err(RafsError::Truncated {
            what: what.to_string(),
            offset,
            len,
            end: data.len() as u64,
        }),
    }
}

/// Fixed-size little-endian field access on a slice already checked to hold the structure.
pub(crate) struct Le<'a>(pub &'a [u8]);

impl Le<'_> {
    pub fn u8(&self, at: usize) -> u8 {
        self.0[at]
    }
    pub fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.0[at], self.0[at + 1]])
    }
    pub fn u32(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.0[at..at + 4]);
        u32::from_le_bytes(b)
    }
    pub fn u64(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[at..at + 8]);
        u64::from_le_bytes(b)
    }
    pub fn bytes<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut b = [0u8; N];
        b.copy_from_slice(&self.0[at..at + N]);
        b
    }
}
