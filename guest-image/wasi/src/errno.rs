//! WASI errno values (`errno` in wasi_snapshot_preview1's typenames.witx):
//! the ones this runtime answers with.

pub type Errno = u16;

pub const BADF: Errno = 8;
pub const BUSY: Errno = 10;
pub const EXIST: Errno = 20;
pub const FAULT: Errno = 21;
pub const FBIG: Errno = 22;
pub const ILSEQ: Errno = 25;
pub const INVAL: Errno = 28;
pub const IO: Errno = 29;
pub const ISDIR: Errno = 31;
pub const LOOP: Errno = 32;
pub const MFILE: Errno = 33;
pub const MLINK: Errno = 34;
pub const NAMETOOLONG: Errno = 37;
pub const NOENT: Errno = 44;
pub const NOSPC: Errno = 51;
pub const NOSYS: Errno = 52;
pub const NOTDIR: Errno = 54;
pub const NOTEMPTY: Errno = 55;
pub const NOTSOCK: Errno = 57;
pub const PERM: Errno = 63;
pub const ROFS: Errno = 69;
pub const SPIPE: Errno = 70;
pub const XDEV: Errno = 75;
pub const NOTCAPABLE: Errno = 76;
