//! The segment files, `segments/<first seq, 20 digits>.jsonl`: their names,
//! listing them in order, and streaming their lines.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use super::{io, StoreError, SEGMENTS};

pub(super) fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.jsonl")
}

pub(super) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let sdir = dir.join(SEGMENTS);
    let mut out = Vec::new();
    for item in fs::read_dir(&sdir).map_err(io(&sdir))? {
        let item = item.map_err(io(&sdir))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if let Some(first) = name
            .strip_suffix(".jsonl")
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((first, item.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Streams lines from the segment files.
pub(super) struct SegmentLines {
    pub(super) segments: std::vec::IntoIter<(u64, PathBuf)>,
    pub(super) current: Option<(PathBuf, std::io::Split<BufReader<File>>)>,
    pub(super) remaining: u64,
}

impl Iterator for SegmentLines {
    type Item = Result<Vec<u8>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.remaining == 0 {
                return None;
            }
            if self.current.is_none() {
                let (_, path) = self.segments.next()?;
                match File::open(&path) {
                    Ok(f) => {
                        self.current =
                            Some((path, BufReader::with_capacity(1 << 20, f).split(b'\n')))
                    }
                    Err(e) => return Some(Err(io(&path)(e))),
                }
            }
            let (path, lines) = self.current.as_mut()?;
            match lines.next() {
                Some(Ok(l)) => {
                    self.remaining -= 1;
                    return Some(Ok(l));
                }
                Some(Err(e)) => return Some(Err(io(path)(e))),
                None => self.current = None,
            }
        }
    }
}
