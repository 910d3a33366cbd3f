//! A thin writer over quick-xml: elements with attributes and escaped text, indented.

use quick_xml::{
    Writer,
    events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event},
};

use super::DocumentError;

fn failed(e: impl std::fmt::Display) -> DocumentError {
    DocumentError::Xml(e.to_string())
}

/// An XML document being written.
pub(crate) struct Xml {
    writer: Writer<Vec<u8>>,
}

impl Xml {
    /// A document with its declaration (and a DOCTYPE, for cXML).
    pub(crate) fn new(doctype: Option<&str>) -> Result<Self, DocumentError> {
        let mut writer = Writer::new_with_indent(Vec::new(), b' ', 2);
        writer
            .write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))
            .map_err(failed)?;
        if let Some(doctype) = doctype {
            writer.write_event(Event::DocType(BytesText::from_escaped(doctype))).map_err(failed)?;
        }
        Ok(Self { writer })
    }

    /// `<name attrs…>`.
    pub(crate) fn open(&mut self, name: &str, attrs: &[(&str, &str)]) -> Result<(), DocumentError> {
        let start = BytesStart::new(name).with_attributes(attrs.iter().copied());
        self.writer.write_event(Event::Start(start)).map_err(failed)
    }

    /// `</name>`.
    pub(crate) fn close(&mut self, name: &str) -> Result<(), DocumentError> {
        self.writer.write_event(Event::End(BytesEnd::new(name))).map_err(failed)
    }

    /// `<name attrs…>text</name>`.
    pub(crate) fn leaf(
        &mut self,
        name: &str,
        attrs: &[(&str, &str)],
        text: &str,
    ) -> Result<(), DocumentError> {
        let start = BytesStart::new(name).with_attributes(attrs.iter().copied());
        self.writer.write_event(Event::Start(start)).map_err(failed)?;
        self.writer.write_event(Event::Text(BytesText::new(text))).map_err(failed)?;
        self.writer.write_event(Event::End(BytesEnd::new(name))).map_err(failed)
    }

    /// `<name attrs…/>`.
    pub(crate) fn empty(
        &mut self,
        name: &str,
        attrs: &[(&str, &str)],
    ) -> Result<(), DocumentError> {
        let start = BytesStart::new(name).with_attributes(attrs.iter().copied());
        self.writer.write_event(Event::Empty(start)).map_err(failed)
    }

    /// The document's text.
    pub(crate) fn finish(self) -> Result<String, DocumentError> {
        let mut bytes = self.writer.into_inner();
        bytes.push(b'\n');
        String::from_utf8(bytes).map_err(failed)
    }
}
