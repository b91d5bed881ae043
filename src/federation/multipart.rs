//! Reading the `multipart/mixed` answers of the federation media endpoints as they stream
//! in: exactly two parts, JSON metadata (always `{}` today) and the media, whose bytes are
//! handed on chunk by chunk so a large file never sits in memory.
//!
//! Everything before the media's bytes (the metadata part and the media part's headers) is
//! buffered up to [`HEAD_LIMIT`]; the media's bytes end at the next delimiter
//! (`CRLF--boundary`, RFC 2046), and an answer that stops before it is refused as
//! truncated. ruma can only parse a whole answer held in memory, hence this reader.

use memchr::memmem::Finder;
use ruma::http_headers::ContentDisposition;

/// Most bytes of metadata and part headers read before the media itself.
pub const HEAD_LIMIT: usize = 64 * 1024;

/// What the media part's headers say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaPart {
    pub content_type: Option<String>,
    pub content_disposition: Option<ContentDisposition>,
    /// Where to fetch the media instead (the part then has no bytes).
    pub location: Option<String>,
}

/// Why an answer could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

fn malformed(why: impl Into<String>) -> Malformed {
    Malformed(why.into())
}

enum State {
    /// Before the media's bytes: everything so far.
    Head(Vec<u8>),
    /// In the media's bytes: what may still be the start of the closing delimiter.
    Content(Vec<u8>),
    Done,
}

/// What one chunk brought.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fed {
    /// The media part's headers, the first time they are complete.
    pub part: Option<MediaPart>,
    /// Media bytes to keep.
    pub content: Vec<u8>,
    /// The media part ended (later bytes are the epilogue).
    pub done: bool,
}

/// A streaming reader of one answer.
pub struct MultipartReader {
    /// `--boundary`.
    dash_boundary: Vec<u8>,
    /// `CRLF--boundary`.
    delimiter: Finder<'static>,
    state: State,
}

/// The boundary of a `multipart/mixed` content type.
fn boundary(content_type: &str) -> Result<String, Malformed> {
    let mut parameters = content_type.split(';');
    let essence = parameters.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("multipart/mixed") {
        return Err(malformed(format!("the answer is {essence}, not multipart/mixed")));
    }
    let boundary = parameters
        .filter_map(|parameter| parameter.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
        .ok_or_else(|| malformed("the multipart answer names no boundary"))?;
    // RFC 2046: 1 to 70 characters.
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(malformed("the multipart boundary is not 1 to 70 characters long"));
    }
    Ok(boundary)
}

/// The index after the line that starts at `from`, if the line is complete.
fn line_end(bytes: &[u8], from: usize) -> Option<usize> {
    memchr::memchr(b'\n', bytes.get(from..)?).map(|index| from + index + 1)
}

/// The header lines of a part starting at `from` (after its delimiter line) and the index
/// of its body, if the blank line that ends them has arrived.
fn headers(bytes: &[u8], from: usize) -> Option<(Vec<&[u8]>, usize)> {
    let mut lines = Vec::new();
    let mut start = from;
    loop {
        let end = line_end(bytes, start)?;
        let line = bytes[start..end].strip_suffix(b"\n").unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Some((lines, end));
        }
        lines.push(line);
        start = end;
    }
}

fn media_part(lines: &[&[u8]]) -> Result<MediaPart, Malformed> {
    let mut part = MediaPart::default();
    for line in lines {
        let Some(colon) = memchr::memchr(b':', line) else {
            return Err(malformed("a part header without a colon"));
        };
        let name = String::from_utf8_lossy(&line[..colon]).trim().to_ascii_lowercase();
        let value = line[colon + 1..].trim_ascii();
        let text = || {
            std::str::from_utf8(value)
                .map(str::to_owned)
                .map_err(|_| malformed(format!("the {name} header is not UTF-8")))
        };
        match name.as_str() {
            "content-type" => part.content_type = Some(text()?),
            "location" => part.location = Some(text()?),
            // A disposition that cannot be read only costs the file name.
            "content-disposition" => {
                part.content_disposition = ContentDisposition::try_from(value).ok()
            }
            _ => {}
        }
    }
    Ok(part)
}

impl MultipartReader {
    /// A reader for an answer whose `Content-Type` is `content_type`.
    pub fn new(content_type: &str) -> Result<Self, Malformed> {
        let boundary = boundary(content_type)?;
        let dash_boundary = format!("--{boundary}").into_bytes();
        let delimiter = Finder::new(format!("\r\n--{boundary}").as_bytes()).into_owned();
        Ok(Self { dash_boundary, delimiter, state: State::Head(Vec::new()) })
    }

    /// Where the first delimiter starts: the answer's start, or after a preamble.
    fn first_delimiter(&self, head: &[u8]) -> Option<usize> {
        if head.starts_with(&self.dash_boundary) {
            Some(0)
        } else {
            self.delimiter.find(head).map(|index| index + 2)
        }
    }

    /// The media part's headers and where its bytes start, once they have arrived.
    fn parse_head(&self, head: &[u8]) -> Result<Option<(MediaPart, usize)>, Malformed> {
        let Some(first) = self.first_delimiter(head) else { return Ok(None) };
        let Some(metadata_headers) = line_end(head, first + self.dash_boundary.len()) else {
            return Ok(None);
        };
        let Some((_, metadata_start)) = headers(head, metadata_headers) else { return Ok(None) };
        let Some(metadata_length) = self.delimiter.find(&head[metadata_start..]) else {
            return Ok(None);
        };
        let metadata = &head[metadata_start..metadata_start + metadata_length];
        if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(metadata).is_err() {
            return Err(malformed("the metadata part is not a JSON object"));
        }
        let second = metadata_start + metadata_length + self.delimiter.needle().len();
        if head.len() < second + 2 {
            return Ok(None);
        }
        if head[second..].starts_with(b"--") {
            return Err(malformed("the answer has no media part"));
        }
        let Some(media_headers) = line_end(head, second) else { return Ok(None) };
        let Some((lines, content_start)) = headers(head, media_headers) else {
            return Ok(None);
        };
        Ok(Some((media_part(&lines)?, content_start)))
    }

    /// Takes in the next chunk of the answer.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Fed, Malformed> {
        let mut fed = Fed::default();
        let mut content = match &mut self.state {
            State::Done => {
                fed.done = true;
                return Ok(fed);
            }
            State::Content(pending) => {
                pending.extend_from_slice(chunk);
                std::mem::take(pending)
            }
            State::Head(head) => {
                head.extend_from_slice(chunk);
                let head = std::mem::take(head);
                match self.parse_head(&head)? {
                    Some((part, start)) => {
                        fed.part = Some(part);
                        head[start..].to_vec()
                    }
                    None if head.len() > HEAD_LIMIT => {
                        return Err(malformed(format!(
                            "more than {HEAD_LIMIT} bytes before the media part's content"
                        )));
                    }
                    None => {
                        self.state = State::Head(head);
                        return Ok(fed);
                    }
                }
            }
        };
        if let Some(end) = self.delimiter.find(&content) {
            content.truncate(end);
            fed.content = content;
            fed.done = true;
            self.state = State::Done;
            return Ok(fed);
        }
        // Keep what could be the start of a delimiter split across chunks.
        let keep = (self.delimiter.needle().len() - 1).min(content.len());
        let pending = content.split_off(content.len() - keep);
        fed.content = content;
        self.state = State::Content(pending);
        Ok(fed)
    }

    /// Checks that the answer ended after the media part.
    pub fn finish(&self) -> Result<(), Malformed> {
        match self.state {
            State::Done => Ok(()),
            State::Head(_) => Err(malformed("the answer ended before the media part")),
            State::Content(_) => Err(malformed("the answer ended inside the media part")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TYPE: &str = "multipart/mixed; boundary=\"b0und\"";

    fn answer(content: &[u8]) -> Vec<u8> {
        let mut body = b"--b0und\r\nContent-Type: application/json\r\n\r\n{}\r\n--b0und\r\n\
            Content-Type: image/png\r\nContent-Disposition: inline; filename=\"cat.png\"\r\n\r\n"
            .to_vec();
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n--b0und--\r\n");
        body
    }

    /// Feeds `body` in chunks of `size`; returns the part and the content.
    fn read(body: &[u8], size: usize) -> Result<(MediaPart, Vec<u8>), Malformed> {
        let mut reader = MultipartReader::new(TYPE)?;
        let (mut part, mut content) = (None, Vec::new());
        for chunk in body.chunks(size) {
            let fed = reader.feed(chunk)?;
            part = part.or(fed.part);
            content.extend_from_slice(&fed.content);
        }
        reader.finish()?;
        Ok((part.ok_or_else(|| malformed("no part"))?, content))
    }

    #[test]
    fn any_chunking_yields_the_same_content() {
        let content: Vec<u8> = (0..5000u32).map(|index| (index % 251) as u8).collect();
        // Bytes that look like the start of a delimiter inside the content.
        let mut tricky = content.clone();
        tricky.extend_from_slice(b"\r\n--b0un\r\n-");
        tricky.extend_from_slice(&content);
        let body = answer(&tricky);
        for size in [1, 2, 3, 7, 64, 1000, body.len()] {
            let (part, read) = read(&body, size).expect("readable");
            assert_eq!(read, tricky, "chunks of {size}");
            assert_eq!(part.content_type.as_deref(), Some("image/png"));
            let filename = part.content_disposition.and_then(|value| value.filename);
            assert_eq!(filename.as_deref(), Some("cat.png"));
        }
    }

    #[test]
    fn answers_of_servers_built_on_ruma_are_read() {
        use ruma::{
            api::{
                OutgoingResponseExt,
                federation::authenticated_media::{
                    Content, ContentMetadata, FileOrLocation, get_content,
                },
            },
            http_headers::ContentDispositionType,
        };
        // What Tuwunel and conduwuit send: ruma's own multipart writer.
        let file: Vec<u8> = (0..70_000u32).map(|index| (index % 249) as u8).collect();
        let disposition = ContentDisposition::new(ContentDispositionType::Attachment)
            .with_filename(Some("report 2.pdf".to_owned()));
        let content = Content::new(file.clone(), "application/pdf".to_owned(), disposition);
        let response =
            get_content::v1::Response::new(ContentMetadata::new(), FileOrLocation::File(content))
                .try_into_http_response::<Vec<u8>>()
                .expect("ruma writes it");
        let content_type = response.headers()["content-type"].to_str().expect("ascii").to_owned();
        let mut reader = MultipartReader::new(&content_type).expect("multipart");
        let (mut part, mut read) = (None, Vec::new());
        for chunk in response.body().chunks(1000) {
            let fed = reader.feed(chunk).expect("readable");
            part = part.or(fed.part);
            read.extend_from_slice(&fed.content);
        }
        reader.finish().expect("complete");
        assert!(read == file);
        let part = part.expect("part");
        assert_eq!(part.content_type.as_deref(), Some("application/pdf"));
        assert_eq!(
            part.content_disposition.and_then(|value| value.filename).as_deref(),
            Some("report 2.pdf")
        );
    }

    #[test]
    fn a_location_part_and_a_preamble() {
        let body = b"preamble\r\n--b0und\r\n\r\n{}\r\n--b0und\r\n\
            Location: https://cdn.example/x\r\n\r\n\r\n--b0und--";
        let (part, content) = read(body, 5).expect("readable");
        assert_eq!(part.location.as_deref(), Some("https://cdn.example/x"));
        assert!(content.is_empty());
    }

    #[test]
    fn malformed_answers_are_refused() {
        assert!(MultipartReader::new("application/json").is_err());
        assert!(MultipartReader::new("multipart/mixed").is_err());
        assert!(
            MultipartReader::new(&format!("multipart/mixed; boundary={}", "x".repeat(71))).is_err()
        );
        // Truncated inside the media.
        let body = answer(b"abc");
        assert!(read(&body[..body.len() - 14], 4).is_err());
        // Metadata that is not an object.
        let body = b"--b0und\r\n\r\n[1]\r\n--b0und\r\n\r\nabc\r\n--b0und--";
        assert!(read(body, 100).is_err());
        // Only a metadata part.
        let body = b"--b0und\r\n\r\n{}\r\n--b0und--\r\n";
        assert!(read(body, 100).is_err());
        // An endless head.
        let mut reader = MultipartReader::new(TYPE).expect("type");
        let junk = vec![b'a'; 8192];
        let mut refused = false;
        for _ in 0..20 {
            if reader.feed(&junk).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "the head is bounded");
    }
}
