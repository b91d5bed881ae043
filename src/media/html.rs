//! Finds what a URL preview needs in an HTML page: `<meta property|name=… content=…>` tags
//! and the `<title>`.
//!
//! A full HTML5 parser (html5ever, via scraper) is a large dependency for reading a handful
//! of tags from the first few hundred kilobytes of a page. This scanner makes one forward
//! pass, never backtracks, skips comments, scripts and styles, accepts any quoting and case,
//! and cannot fail: malformed markup only means fewer tags found. Its input is bounded by
//! `url_preview_max_spider_size`, and so is its work.

/// Most `<meta>` tags kept from one page.
const MAX_TAGS: usize = 256;
/// Longest value kept, in characters; longer ones are cut.
const MAX_VALUE: usize = 2048;

/// What a page says about itself.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PageMeta {
    pub title: Option<String>,
    /// `(property or name, content)` of each `<meta>` tag, keys lower-cased, in page order.
    pub meta: Vec<(String, String)>,
}

impl PageMeta {
    /// The first value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.meta.iter().find(|(name, _)| name == key).map(|(_, value)| value.as_str())
    }
}

/// Scans a page.
pub fn scan(html: &str) -> PageMeta {
    let mut page = PageMeta::default();
    let mut position = 0;
    while let Some(offset) = html[position..].find('<') {
        let start = position + offset;
        let rest = &html[start..];
        position = if rest.starts_with("<!--") {
            html[start + 4..].find("-->").map_or(html.len(), |end| start + 4 + end + 3)
        } else if let Some(tag) = tag_name(rest, &["script", "style", "title", "meta"]) {
            let after_name = start + 1 + tag.len();
            match tag {
                "meta" => {
                    let (attributes, end) = attributes(html, after_name);
                    if page.meta.len() < MAX_TAGS {
                        keep_meta(&mut page, &attributes);
                    }
                    end
                }
                "title" => {
                    let content_start =
                        html[after_name..].find('>').map_or(html.len(), |end| after_name + end + 1);
                    let content_end = find_ci(html, content_start, "</title").unwrap_or(html.len());
                    if page.title.is_none() {
                        let title = collapse_whitespace(&decode_entities(
                            &html[content_start..content_end],
                        ));
                        if !title.is_empty() {
                            page.title = Some(truncate(title));
                        }
                    }
                    content_end
                }
                // Scripts and styles may contain anything that looks like a tag.
                closing => find_ci(html, after_name, &format!("</{closing}"))
                    .map_or(html.len(), |end| end + 2),
            }
        } else {
            start + 1
        };
    }
    page
}

/// The tag among `names` that `text` (starting at `<`) opens, matched without case.
fn tag_name<'a>(text: &str, names: &[&'a str]) -> Option<&'a str> {
    let text = text.strip_prefix('<')?;
    names.iter().copied().find(|name| {
        text.get(..name.len()).is_some_and(|head| head.eq_ignore_ascii_case(name))
            && text[name.len()..]
                .chars()
                .next()
                .is_none_or(|next| next.is_ascii_whitespace() || next == '>' || next == '/')
    })
}

/// Where `needle` (ASCII) next occurs at or after `from`, ignoring case.
fn find_ci(haystack: &str, from: usize, needle: &str) -> Option<usize> {
    let bytes = haystack.as_bytes();
    let needle = needle.as_bytes();
    (from..=bytes.len().checked_sub(needle.len())?)
        .find(|&index| bytes[index..index + needle.len()].eq_ignore_ascii_case(needle))
}

/// Parses the attributes of a tag from `from` to its `>`; returns them (names lower-cased,
/// values entity-decoded) and the position after the tag.
fn attributes(html: &str, from: usize) -> (Vec<(String, String)>, usize) {
    let bytes = html.as_bytes();
    let mut position = from;
    let mut found = Vec::new();
    loop {
        while position < bytes.len()
            && (bytes[position].is_ascii_whitespace() || bytes[position] == b'/')
        {
            position += 1;
        }
        if position >= bytes.len() {
            return (found, bytes.len());
        }
        if bytes[position] == b'>' {
            return (found, position + 1);
        }
        let name_start = position;
        while position < bytes.len()
            && !bytes[position].is_ascii_whitespace()
            && !matches!(bytes[position], b'=' | b'>' | b'/')
        {
            position += 1;
        }
        let name = html[name_start..position].to_ascii_lowercase();
        while position < bytes.len() && bytes[position].is_ascii_whitespace() {
            position += 1;
        }
        let mut value = String::new();
        if bytes.get(position) == Some(&b'=') {
            position += 1;
            while position < bytes.len() && bytes[position].is_ascii_whitespace() {
                position += 1;
            }
            match bytes.get(position) {
                Some(&quote @ (b'"' | b'\'')) => {
                    let value_start = position + 1;
                    let value_end = html[value_start..]
                        .find(char::from(quote))
                        .map_or(bytes.len(), |end| value_start + end);
                    value = decode_entities(&html[value_start..value_end]);
                    position = (value_end + 1).min(bytes.len());
                }
                _ => {
                    let value_start = position;
                    while position < bytes.len()
                        && !bytes[position].is_ascii_whitespace()
                        && bytes[position] != b'>'
                    {
                        position += 1;
                    }
                    value = decode_entities(&html[value_start..position]);
                }
            }
        }
        if name.is_empty() {
            // A value with no name (`="x"`) is dropped; having read it, the scan is past it
            // and must not step once more (that could land inside a UTF-8 character, or
            // on the tag's `>`). Otherwise nothing was read: step over the stray byte.
            if position == name_start {
                position += 1;
            }
        } else {
            found.push((name, value));
        }
    }
}

fn keep_meta(page: &mut PageMeta, attributes: &[(String, String)]) {
    let value = |key: &str| {
        attributes.iter().find(|(name, _)| name == key).map(|(_, value)| value.as_str())
    };
    let (Some(key), Some(content)) =
        (value("property").or_else(|| value("name")), value("content"))
    else {
        return;
    };
    let content = content.trim();
    if !key.is_empty() && !content.is_empty() {
        page.meta.push((key.trim().to_ascii_lowercase(), truncate(content.to_owned())));
    }
}

fn truncate(mut text: String) -> String {
    if let Some((index, _)) = text.char_indices().nth(MAX_VALUE) {
        text.truncate(index);
    }
    text
}

fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Decodes the character references that matter in titles and descriptions: the named ones
/// of XML plus `&nbsp;`, and numeric ones. Anything else is left as written.
fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(index) = rest.find('&') {
        out.push_str(&rest[..index]);
        rest = &rest[index..];
        let decoded = rest.find(';').filter(|&end| end <= 10).and_then(|end| {
            let character = match &rest[1..end] {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                entity => entity.strip_prefix('#').and_then(|number| {
                    match number.strip_prefix('x').or_else(|| number.strip_prefix('X')) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok(),
                        None => number.parse().ok(),
                    }
                    .and_then(char::from_u32)
                }),
            };
            character.map(|character| (character, end))
        });
        match decoded {
            Some((character, end)) => {
                out.push(character);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_opengraph_tags_and_title() {
        let page = scan(
            r#"<!DOCTYPE html><html><HEAD>
            <title>
              Fish &amp; Chips
            </title>
            <meta charset="utf-8">
            <META PROPERTY="og:title" CONTENT="The &quot;best&quot; fish">
            <meta property='og:description' content='Crispy &#x2014; and hot&#33;'/>
            <meta name=description content=unquoted>
            <meta content="https://example.org/a.png?x=1&amp;y=2" property="og:image" />
            </head><body><p>hello</p></body></html>"#,
        );
        assert_eq!(page.title.as_deref(), Some("Fish & Chips"));
        assert_eq!(page.get("og:title"), Some("The \"best\" fish"));
        assert_eq!(page.get("og:description"), Some("Crispy \u{2014} and hot!"));
        assert_eq!(page.get("description"), Some("unquoted"));
        assert_eq!(page.get("og:image"), Some("https://example.org/a.png?x=1&y=2"));
    }

    #[test]
    fn values_without_names_end_where_they_end() {
        // Found by the property test: the scan stepped past a nameless value's end, once
        // into the middle of `é` (a panic), once over the tag's `>`.
        let page = scan("<meta =-->=\"\"\u{e9}");
        assert_eq!(page, PageMeta::default());
        let page = scan("<meta =x><title>t</title>");
        assert_eq!(page.title.as_deref(), Some("t"));
        let page = scan("<meta =\"\"\u{e9}\u{e9} property=og:title content=c>");
        assert_eq!(page.get("og:title"), Some("c"));
    }

    #[test]
    fn skips_comments_scripts_and_styles() {
        let page = scan(
            r#"<!-- <meta property="og:title" content="commented"> -->
            <script>var s = '<meta property="og:title" content="scripted">';</script>
            <style>/* <title>styled</title> */</style>
            <meta property="og:title" content="real">"#,
        );
        assert_eq!(page.get("og:title"), Some("real"));
        assert_eq!(page.title, None);
    }

    #[test]
    fn malformed_markup_never_panics() {
        for input in [
            "<",
            "<meta",
            "<meta property=",
            "<meta property=\"og:title\" content=\"unterminated",
            "<title>no end",
            "<!-- no end",
            "<script>",
            "&#xFFFFFFFF; &#; &bogus; &",
            "<meta é=\"ü\" property=og:title content=ünïcödé>",
            "<<<>>><meta/><meta//>",
        ] {
            let _ = scan(input);
        }
        let page = scan("<meta property=og:title content=ünïcödé>");
        assert_eq!(page.get("og:title"), Some("ünïcödé"));
    }

    #[test]
    fn long_values_are_cut() {
        let long = "x".repeat(MAX_VALUE * 2);
        let page = scan(&format!("<meta property=\"og:description\" content=\"{long}\">"));
        assert_eq!(page.get("og:description").map(str::len), Some(MAX_VALUE));
    }
}

#[cfg(test)]
mod proptests {
    use proptest::prelude::*;

    use super::scan;

    /// Text made of the pieces the scanner looks for, so that odd combinations are common.
    fn htmlish() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("<".to_owned()),
            Just(">".to_owned()),
            Just("<!--".to_owned()),
            Just("-->".to_owned()),
            Just("<meta ".to_owned()),
            Just("<META".to_owned()),
            Just("<title>".to_owned()),
            Just("</title".to_owned()),
            Just("<script>".to_owned()),
            Just("</script".to_owned()),
            Just("property=\"og:title\"".to_owned()),
            Just("content='".to_owned()),
            Just("=".to_owned()),
            Just("\"".to_owned()),
            Just("&amp;".to_owned()),
            Just("&#x1F600;".to_owned()),
            Just("&#99999999;".to_owned()),
            Just("&".to_owned()),
            Just(";".to_owned()),
            any::<String>(),
            "[é€😀 \t\n]{1,4}",
        ];
        prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #[test]
        fn any_page_scans_without_panicking(page in htmlish()) {
            let _ = scan(&page);
        }

        #[test]
        fn arbitrary_text_scans_without_panicking(page in any::<String>()) {
            let _ = scan(&page);
        }
    }
}
