//! `LineIndex`: the source line of every field of a multi-document YAML text.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, Parser};

use super::path::FieldPath;

/// Maps (document index, field path) to the 1-based line where the field starts.
#[derive(Debug, Default)]
pub struct LineIndex {
    lines: HashMap<(usize, FieldPath), usize>,
}

enum Frame {
    Mapping { key: Option<String> },
    Sequence { next: usize },
}

impl LineIndex {
    /// Indexes `text`; stops quietly at a syntax error (the parser reports those itself).
    pub fn build(text: &str) -> Self {
        let mut index = LineIndex::default();
        let mut doc = 0usize;
        let mut seen_doc = false;
        let mut path = FieldPath::default();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(text) {
            let Ok((event, span)) = item else { break };
            let line = span.start.line();
            match event {
                Event::DocumentStart(..) => {
                    if seen_doc {
                        doc += 1;
                    }
                    seen_doc = true;
                    path = FieldPath::default();
                    stack.clear();
                }
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Mapping { key }) = stack.last_mut()
                        && key.is_none()
                    {
                        let k = value.to_string();
                        index.lines.entry((doc, path.key(&k))).or_insert(line);
                        *key = Some(k);
                        continue;
                    }
                    index.value_at(doc, &mut path, &mut stack, line);
                    index.after_value(&mut path, &mut stack);
                }
                Event::Alias(_) => {
                    index.value_at(doc, &mut path, &mut stack, line);
                    index.after_value(&mut path, &mut stack);
                }
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    index.value_at(doc, &mut path, &mut stack, line);
                    stack.push(if matches!(event, Event::MappingStart(..)) {
                        Frame::Mapping { key: None }
                    } else {
                        Frame::Sequence { next: 0 }
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    index.after_value(&mut path, &mut stack);
                }
                _ => {}
            }
        }
        index
    }

    /// The line of `path` in document `doc`, or of its nearest indexed ancestor.
    pub fn line(&self, doc: usize, path: &FieldPath) -> Option<usize> {
        let mut p = path.clone();
        loop {
            if let Some(l) = self.lines.get(&(doc, p.clone())) {
                return Some(*l);
            }
            p.0.pop()?;
        }
    }

    /// Records the line of a value node and descends into its path.
    fn value_at(&mut self, doc: usize, path: &mut FieldPath, stack: &mut [Frame], line: usize) {
        match stack.last() {
            Some(Frame::Mapping { key: Some(k) }) => *path = path.key(k),
            Some(Frame::Sequence { next }) => *path = path.index(*next),
            _ => {}
        }
        self.lines.entry((doc, path.clone())).or_insert(line);
    }

    /// Leaves the path of a finished value and moves its parent on.
    fn after_value(&mut self, path: &mut FieldPath, stack: &mut [Frame]) {
        match stack.last_mut() {
            Some(Frame::Mapping { key }) => {
                *key = None;
                path.0.pop();
            }
            Some(Frame::Sequence { next }) => {
                *next += 1;
                path.0.pop();
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lines_of_nested_fields_across_documents() {
        let text = "a: 1\nb:\n  c:\n    - x: 1\n    - x: 2\n      y: [1, 2]\n---\nz: 3\n";
        let idx = LineIndex::build(text);
        let p = |s| FieldPath::parse(s);
        assert_eq!(idx.line(0, &p("a")), Some(1));
        assert_eq!(idx.line(0, &p("b.c")), Some(3));
        assert_eq!(idx.line(0, &p("b.c[1].x")), Some(5));
        assert_eq!(idx.line(0, &p("b.c[1].y")), Some(6));
        assert_eq!(idx.line(0, &p("b.c[1].nope")), Some(5));
        assert_eq!(idx.line(1, &p("z")), Some(8));
    }
}
