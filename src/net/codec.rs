//! The gRPC codec of our service: prost, with a look at the bytes before they are decoded. A
//! message's size limit alone does not bound what decoding it costs: an empty record is 2 bytes on
//! the wire and some 170 bytes once decoded, so a 16 MB index message of empty records took a node
//! to 1.2 GiB before any check of ours could run. So the counts of every repeated message that a
//! control message holds (folder offers, records, version counters, chunks, chunk edits) are read
//! from the wire format first, by walking it without allocating, and a message over the limits of
//! `wire.rs` is refused undecoded (an `OUT_OF_RANGE` stream error: a protocol violation).

use std::marker::PhantomData;

use prost::bytes::Buf;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;

use super::proto::{ControlMessage, DataMessage};
use super::wire::{MAX_CHUNKS_PER_UPDATE, MAX_COUNTERS_PER_UPDATE, MAX_FILES_PER_UPDATE, MAX_OFFERS};

/// A message type whose encoded form can be checked before it is decoded.
pub trait Bounded {
    /// Refuses a message whose decoding would cost more than the protocol's limits allow.
    fn check(_encoded: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// Chunk requests and responses hold no repeated messages: their size limit bounds them.
impl Bounded for DataMessage {}

/// What a control message holds, counted on the wire.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    offers: u64,
    files: u64,
    counters: u64,
    chunks: u64,
    edits: u64,
}

impl Bounded for ControlMessage {
    fn check(encoded: &[u8]) -> Result<(), String> {
        let mut counts = Counts::default();
        // Malformed bytes are left to prost, which refuses them without a large allocation.
        if count_control(encoded, &mut counts).is_none() {
            return Ok(());
        }
        let over = |what: &str, n: u64, max: u64| {
            if n > max {
                Err(format!("control message of {n} {what} (at most {max})"))
            } else {
                Ok(())
            }
        };
        over("folder offers", counts.offers, MAX_OFFERS as u64)?;
        over("records", counts.files, MAX_FILES_PER_UPDATE as u64)?;
        over("version counters", counts.counters, MAX_COUNTERS_PER_UPDATE)?;
        over("chunks", counts.chunks, MAX_CHUNKS_PER_UPDATE)?;
        over("chunk edits", counts.edits, MAX_CHUNKS_PER_UPDATE)
    }
}

/// One field of a protobuf message: its number, and for length-delimited fields the payload.
fn fields(mut buf: &[u8], mut visit: impl FnMut(u32, Option<&[u8]>) -> Option<()>) -> Option<()> {
    while !buf.is_empty() {
        let key = prost::encoding::decode_varint(&mut buf).ok()?;
        let (field, wire_type) = ((key >> 3) as u32, key & 7);
        match wire_type {
            0 => {
                prost::encoding::decode_varint(&mut buf).ok()?;
                visit(field, None)?;
            }
            1 => buf = buf.get(8..)?,
            2 => {
                let len = usize::try_from(prost::encoding::decode_varint(&mut buf).ok()?).ok()?;
                let payload = buf.get(..len)?;
                buf = &buf[len..];
                visit(field, Some(payload))?;
            }
            5 => buf = buf.get(4..)?,
            _ => return None,
        }
    }
    Some(())
}

/// Field numbers from `proto/syncnode.proto`.
fn count_control(buf: &[u8], c: &mut Counts) -> Option<()> {
    fields(buf, |field, payload| match (field, payload) {
        (1, Some(hello)) => fields(hello, |f, p| {
            if f == 3 && p.is_some() {
                c.offers += 1;
            }
            Some(())
        }),
        (2, Some(update)) => fields(update, |f, p| match (f, p) {
            (3, Some(file)) => {
                c.files += 1;
                count_file(file, c)
            }
            _ => Some(()),
        }),
        _ => Some(()),
    })
}

fn count_file(buf: &[u8], c: &mut Counts) -> Option<()> {
    fields(buf, |field, payload| match (field, payload) {
        (6, Some(vector)) => fields(vector, |f, p| {
            if f == 1 && p.is_some() {
                c.counters += 1;
            }
            Some(())
        }),
        (10, Some(_)) => {
            c.chunks += 1;
            Some(())
        }
        (12, Some(edit)) => {
            c.edits += 1;
            fields(edit, |f, p| {
                if f == 3 && p.is_some() {
                    c.chunks += 1;
                }
                Some(())
            })
        }
        _ => Some(()),
    })
}

/// prost's codec with [`Bounded::check`] before each decode (named in `build.rs`).
#[derive(Debug)]
pub struct BoundedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        BoundedCodec(PhantomData)
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Bounded + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder(PhantomData)
    }
}

#[derive(Debug)]
pub struct BoundedDecoder<U>(PhantomData<U>);

impl<U: Message + Default + Bounded> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // One message's bytes are contiguous here (tonic hands over the whole frame).
        if buf.chunk().len() == buf.remaining() {
            U::check(buf.chunk()).map_err(Status::out_of_range)?;
        }
        U::decode(buf).map(Some).map_err(|e| Status::internal(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::proto::{self, control_message};

    fn encoded(kind: control_message::Kind) -> Vec<u8> {
        ControlMessage { kind: Some(kind) }.encode_to_vec()
    }

    #[test]
    fn the_counts_of_a_message_are_read_without_decoding_it() {
        let file = proto::FileInfo {
            path: "a".into(),
            version: Some(proto::Vector { counters: vec![proto::Counter { id: 1, value: 2 }; 3] }),
            chunks: vec![proto::Chunk { offset: 0, size: 1, hash: vec![1; 32] }; 5],
            edits: vec![proto::ChunkEdit { copy_from: 0, copy_len: 9, insert: vec![proto::Chunk::default(); 2] }; 4],
            ..Default::default()
        };
        let bytes = encoded(control_message::Kind::Index(proto::IndexUpdate {
            folder: "f".into(),
            index_id: 1,
            files: vec![file; 7],
        }));
        let mut c = Counts::default();
        count_control(&bytes, &mut c).unwrap();
        assert_eq!(c, Counts { offers: 0, files: 7, counters: 21, chunks: 7 * (5 + 4 * 2), edits: 28 });
        let hello = encoded(control_message::Kind::Hello(proto::Hello {
            folders: vec![proto::FolderOffer::default(); 3],
            ..Default::default()
        }));
        let mut c = Counts::default();
        count_control(&hello, &mut c).unwrap();
        assert_eq!(c.offers, 3);
    }

    #[test]
    fn a_message_of_many_empty_records_is_refused_before_it_is_decoded() {
        // 2 bytes each on the wire, some 170 once decoded.
        let bytes = encoded(control_message::Kind::Index(proto::IndexUpdate {
            folder: "f".into(),
            index_id: 1,
            files: vec![proto::FileInfo::default(); MAX_FILES_PER_UPDATE + 1],
        }));
        let e = ControlMessage::check(&bytes).unwrap_err();
        assert!(e.contains("records"), "{e}");
        let chunks = encoded(control_message::Kind::Index(proto::IndexUpdate {
            files: vec![proto::FileInfo {
                chunks: vec![proto::Chunk::default(); MAX_CHUNKS_PER_UPDATE as usize + 1],
                ..Default::default()
            }],
            ..Default::default()
        }));
        assert!(ControlMessage::check(&chunks).unwrap_err().contains("chunks"));
        let fine = encoded(control_message::Kind::Index(proto::IndexUpdate {
            files: vec![proto::FileInfo::default(); 10],
            ..Default::default()
        }));
        assert!(ControlMessage::check(&fine).is_ok());
        // Garbage is left to prost (which refuses it).
        assert!(ControlMessage::check(&[0xff, 0xff, 0xff]).is_ok());
    }
}
