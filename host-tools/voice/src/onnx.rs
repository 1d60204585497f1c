//! The one edit we make to a Piper voice's ONNX graph, in memory: mark the output of its `Ceil` node (VITS's
//! `w_ceil`, the number of spectrogram frames each phoneme id lasts) as a second graph output. piper-tts does
//! the same (`piper.patch_voice_with_alignment`) to get phoneme alignments; the audio is unchanged, and the
//! durations are the model's own, so lip-sync timings are exact to one hop (256 samples, 11.6 ms at 22050 Hz).
//!
//! Only the protobuf wire format is needed: ModelProto.graph (field 7), GraphProto.node (1) and .output (12),
//! NodeProto.output (2) and .op_type (4), ValueInfoProto.name (1).

use crate::Error;
use std::ops::Range;

struct Field {
    number: u64,
    wire: u8,
    /// The payload of a length-delimited field (wire type 2).
    value: Range<usize>,
    /// Key, length and payload.
    whole: Range<usize>,
}

fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn fields(b: &[u8]) -> Option<Vec<Field>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < b.len() {
        let start = pos;
        let key = varint(b, &mut pos)?;
        let wire = (key & 7) as u8;
        let value = match wire {
            0 => {
                varint(b, &mut pos)?;
                pos..pos
            }
            1 => {
                pos = pos.checked_add(8)?;
                pos..pos
            }
            2 => {
                let len = usize::try_from(varint(b, &mut pos)?).ok()?;
                let s = pos;
                pos = pos.checked_add(len)?;
                s..pos
            }
            5 => {
                pos = pos.checked_add(4)?;
                pos..pos
            }
            _ => return None,
        };
        if pos > b.len() {
            return None;
        }
        out.push(Field {
            number: key >> 3,
            wire,
            value,
            whole: start..pos,
        });
    }
    Some(out)
}

fn strings(b: &[u8], number: u64) -> Option<Vec<String>> {
    Some(
        fields(b)?
            .into_iter()
            .filter(|f| f.number == number && f.wire == 2)
            .map(|f| String::from_utf8_lossy(&b[f.value]).into_owned())
            .collect(),
    )
}

/// The model with `w_ceil` added as an output, and that output's name.
pub fn with_duration_output(model: &[u8]) -> Result<(Vec<u8>, String), Error> {
    let bad = |what: &str| Error::Voice(format!("the voice's ONNX file: {what}"));
    let top = fields(model).ok_or_else(|| bad("not a protobuf message"))?;
    let graph_field = top
        .iter()
        .find(|f| f.number == 7 && f.wire == 2)
        .ok_or_else(|| bad("no graph"))?;
    let graph = &model[graph_field.value.clone()];
    let gf = fields(graph).ok_or_else(|| bad("the graph is not a protobuf message"))?;
    let mut ceil = Vec::new();
    let mut outputs = Vec::new();
    for f in &gf {
        if f.wire != 2 {
            continue;
        }
        let body = &graph[f.value.clone()];
        if f.number == 1 {
            let op = strings(body, 4).ok_or_else(|| bad("a node is not a protobuf message"))?;
            if op.iter().any(|o| o == "Ceil") {
                ceil.extend(strings(body, 2).unwrap_or_default());
            }
        } else if f.number == 12 {
            outputs.extend(strings(body, 1).unwrap_or_default());
        }
    }
    let [name] = ceil.as_slice() else {
        return Err(bad(&format!(
            "expected one Ceil node output (the durations), found {}",
            ceil.len()
        )));
    };
    if outputs.iter().any(|o| o == name) {
        return Ok((model.to_vec(), name.clone()));
    }
    let mut vi = vec![0x0a];
    put_varint(&mut vi, name.len() as u64);
    vi.extend_from_slice(name.as_bytes());
    let mut new_graph = graph.to_vec();
    new_graph.push((12 << 3) | 2);
    put_varint(&mut new_graph, vi.len() as u64);
    new_graph.extend(vi);
    let mut out = Vec::with_capacity(model.len() + 64);
    out.extend_from_slice(&model[..graph_field.whole.start]);
    out.push((7 << 3) | 2);
    put_varint(&mut out, new_graph.len() as u64);
    out.extend(new_graph);
    out.extend_from_slice(&model[graph_field.whole.end..]);
    Ok((out, name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(fields: &[(u64, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in fields {
            put_varint(&mut out, (n << 3) | 2);
            put_varint(&mut out, v.len() as u64);
            out.extend(v);
        }
        out
    }

    #[test]
    fn adds_the_ceil_output_once() {
        let node = msg(&[
            (1, b"x".to_vec()),
            (2, b"w_ceil".to_vec()),
            (4, b"Ceil".to_vec()),
        ]);
        let other = msg(&[(2, b"y".to_vec()), (4, b"Add".to_vec())]);
        let out0 = msg(&[(1, b"output".to_vec())]);
        let graph = msg(&[(1, other), (1, node), (12, out0)]);
        let mut model = vec![0x08, 0x07]; // ir_version 7
        model.extend(msg(&[(7, graph)]));
        let (patched, name) = with_duration_output(&model).unwrap();
        assert_eq!(name, "w_ceil");
        let top = fields(&patched).unwrap();
        let g = top.iter().find(|f| f.number == 7).unwrap();
        let graph = &patched[g.value.clone()];
        let outs: Vec<String> = fields(graph)
            .unwrap()
            .into_iter()
            .filter(|f| f.number == 12)
            .flat_map(|f| strings(&graph[f.value], 1).unwrap())
            .collect();
        assert_eq!(outs, vec!["output", "w_ceil"]);
        // Patching again changes nothing.
        assert_eq!(with_duration_output(&patched).unwrap().0, patched);
        assert!(with_duration_output(b"\xff\xff").is_err());
    }
}
