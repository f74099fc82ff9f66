//! Decompression told by content, never by name or media type, as moby's `DecompressStream` does: the one
//! place that maps magic numbers to decoders, for layers, archives given to `kiln load` and `ADD` alike.
//! Everything is decompressed in-process.

use std::io::{self, BufRead, Read};

/// A compression format a stream can be in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl Format {
    /// The format the first bytes of a stream show.
    pub fn detect(head: &[u8]) -> Format {
        if head.starts_with(&[0x1f, 0x8b, 0x08]) {
            Format::Gzip
        } else if head.starts_with(b"BZh") {
            Format::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Format::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Format::Zstd
        } else {
            Format::None
        }
    }

    /// A reader of what `compressed`, in this format, holds.
    pub fn decoder<'a, R: BufRead + Send + 'a>(self, compressed: R) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Format::None => Box::new(compressed),
            Format::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(compressed)),
            Format::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(compressed)),
            Format::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(compressed)),
            Format::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(compressed)?),
        })
    }
}

/// The decompressed content of `reader`, and the format it was in.
pub fn decompress<'a, R: BufRead + Send + 'a>(
    mut reader: R,
) -> io::Result<(Format, Box<dyn Read + Send + 'a>)> {
    let format = Format::detect(reader.fill_buf()?);
    Ok((format, format.decoder(reader)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic() {
        assert_eq!(Format::detect(&[0x1f, 0x8b, 0x08, 0]), Format::Gzip);
        assert_eq!(Format::detect(b"BZh91AY"), Format::Bzip2);
        assert_eq!(Format::detect(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]), Format::Xz);
        assert_eq!(Format::detect(&[0x28, 0xb5, 0x2f, 0xfd]), Format::Zstd);
        assert_eq!(Format::detect(b"ustar"), Format::None);
    }
}
