//! Thumbnails: which size to make, and making it.
//!
//! Only the spec's recommended sizes are generated (32x32 and 96x96 crop; 320x240, 640x480
//! and 800x600 scale): a request gets the smallest of them at least as large as it asked
//! for, so each media item has at most ten cached thumbnails whatever sizes clients invent.
//! A request larger than every size, or an image already within the chosen size, gets the
//! original: the spec forbids upscaling and forbids answering smaller than asked.
//!
//! Decoding is where hostile files bite, so: only PNG, JPEG, GIF and WebP are read (pure
//! Rust decoders), the declared dimensions are read from the header and refused over
//! `media_thumbnail_max_pixels` before any pixel is decoded, and the decoder runs with an
//! allocation limit derived from the same budget. Everything here blocks; callers run it on
//! the blocking pool.

use std::{
    fs::File,
    io::{BufReader, Cursor},
    path::Path,
};

use axum::http::StatusCode;
use image::{
    AnimationDecoder, DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits,
    codecs::{
        gif::{GifDecoder, GifEncoder, Repeat},
        jpeg::JpegEncoder,
        png::PngDecoder,
        webp::WebPDecoder,
    },
    imageops::FilterType,
    metadata::Orientation,
};
use ruma::api::error::ErrorKind;

use crate::{Error, Result};

/// How a thumbnail fits the requested box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Exactly the box's size (when the image allows), cropped to its aspect ratio.
    Crop,
    /// Within the box, keeping the image's aspect ratio.
    Scale,
}

impl Method {
    /// The method a request asked for (`scale` when it did not say); `400 M_INVALID_PARAM`
    /// for a method the spec does not define.
    pub fn requested(method: Option<&ruma::media::Method>) -> Result<Self> {
        match method {
            None | Some(ruma::media::Method::Scale) => Ok(Self::Scale),
            Some(ruma::media::Method::Crop) => Ok(Self::Crop),
            Some(other) => Err(Error::invalid_param(format!(
                "Unknown thumbnail method `{}`: use crop or scale.",
                other.as_str()
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Crop => "crop",
            Self::Scale => "scale",
        }
    }
}

/// A requested thumbnail dimension; absurd values saturate (and then fit no size).
pub fn dimension(value: ruma::UInt) -> u32 {
    u32::try_from(u64::from(value)).unwrap_or(u32::MAX)
}

/// One of the sizes thumbnails are made at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub width: u32,
    pub height: u32,
    pub method: Method,
}

/// The spec's recommended sizes, smallest first.
pub const SIZES: [Size; 5] = [
    Size { width: 32, height: 32, method: Method::Crop },
    Size { width: 96, height: 96, method: Method::Crop },
    Size { width: 320, height: 240, method: Method::Scale },
    Size { width: 640, height: 480, method: Method::Scale },
    Size { width: 800, height: 600, method: Method::Scale },
];

/// The smallest size of the requested method that covers `width`x`height`, else the
/// smallest of any method that does; `None` when the request is larger than every size.
pub fn choose(width: u32, height: u32, method: Method) -> Option<Size> {
    let covers = |size: &&Size| size.width >= width && size.height >= height;
    SIZES
        .iter()
        .filter(|size| size.method == method)
        .find(covers)
        .or_else(|| SIZES.iter().find(covers))
        .copied()
}

/// A thumbnail to produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// `None`: larger than every size, so the original (still, unless animation was asked).
    pub size: Option<Size>,
    /// The client asked for an animation (`animated=true`).
    pub animated: bool,
}

impl Request {
    /// The cache key of this thumbnail within its media item.
    pub fn key(&self) -> String {
        let animated = if self.animated { "-animated" } else { "" };
        match self.size {
            Some(Size { width, height, method }) => {
                format!("{width}x{height}-{}{animated}", method.as_str())
            }
            None => format!("original{animated}"),
        }
    }
}

/// What to do with an image of a given size for a thumbnail size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The image already fits: serve it as it is.
    Original,
    /// Resize to exactly `width`x`height`; with `crop`, fill that box and cut the overflow
    /// (centred) instead of squeezing.
    Resize { width: u32, height: u32, crop: bool },
}

/// Decides the output dimensions. Never upscales.
pub fn plan(image_width: u32, image_height: u32, size: Size) -> Plan {
    if image_width <= size.width && image_height <= size.height {
        return Plan::Original;
    }
    match size.method {
        Method::Scale => {
            let ratio = f64::min(
                f64::from(size.width) / f64::from(image_width),
                f64::from(size.height) / f64::from(image_height),
            );
            Plan::Resize {
                width: scaled(image_width, ratio),
                height: scaled(image_height, ratio),
                crop: false,
            }
        }
        // An image smaller than the box in one direction is cut in the other only.
        Method::Crop => Plan::Resize {
            width: size.width.min(image_width),
            height: size.height.min(image_height),
            crop: true,
        },
    }
}

fn scaled(length: u32, ratio: f64) -> u32 {
    // The ratio is below 1 here, so the product fits in u32.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let scaled = (f64::from(length) * ratio).round() as u32;
    scaled.clamp(1, length)
}

/// Bounds on decoding work.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Largest canvas decoded, and the total over the frames of an animation.
    pub max_pixels: u64,
    pub max_frames: usize,
}

impl Budget {
    /// The decoder's allocation limit: four bytes per pixel plus room for its own buffers.
    fn limits(&self) -> Limits {
        let mut limits = Limits::default();
        limits.max_alloc = Some(self.max_pixels.saturating_mul(4).saturating_add(16 << 20));
        limits
    }
}

/// A thumbnail, or the decision to serve the original.
#[derive(Debug)]
pub enum Outcome {
    /// The original fits: serve it (it is an image of this type and size).
    Original {
        content_type: &'static str,
        width: u32,
        height: u32,
    },
    Generated {
        bytes: Vec<u8>,
        content_type: &'static str,
        width: u32,
        height: u32,
    },
}

/// What the header of an image says.
struct Header {
    format: ImageFormat,
    /// Dimensions as displayed (after EXIF orientation).
    width: u32,
    height: u32,
    orientation: Orientation,
    /// The format and header allow more than one frame.
    animated: bool,
}

/// Makes the thumbnail of the file at `path`. Blocking.
pub fn generate(path: &Path, request: &Request, budget: &Budget) -> Result<Outcome> {
    let header = read_header(path, budget)?;
    let animate = request.animated && header.animated;
    let plan = request.size.map_or(Plan::Original, |size| plan(header.width, header.height, size));
    let plan = match plan {
        // Serving an animated original to a client that did not ask for animation would
        // break the spec's "MUST NOT return an animated thumbnail": re-encode it still.
        Plan::Original if header.animated && !animate => {
            Plan::Resize { width: header.width, height: header.height, crop: false }
        }
        Plan::Original => {
            return Ok(Outcome::Original {
                content_type: header.format.to_mime_type(),
                width: header.width,
                height: header.height,
            });
        }
        plan => plan,
    };
    if animate && let Some(outcome) = animated(path, &header, plan, budget)? {
        return Ok(outcome);
    }
    still(path, &header, plan, budget)
}

fn open(path: &Path) -> Result<BufReader<File>> {
    Ok(BufReader::new(File::open(path)?))
}

fn not_an_image() -> Error {
    Error::not_found("This content has no thumbnail: it is not a PNG, JPEG, GIF or WebP image.")
}

/// The answer for a file the decoders cannot read.
pub(super) fn unreadable() -> Error {
    Error::matrix(
        StatusCode::BAD_REQUEST,
        ErrorKind::Unknown,
        "Cannot make a thumbnail of this file: the image cannot be read.",
    )
}

fn undecodable(error: &image::ImageError) -> Error {
    match error {
        image::ImageError::Limits(_) => too_large_to_decode(),
        error => Error::matrix(
            StatusCode::BAD_REQUEST,
            ErrorKind::Unknown,
            format!("Cannot generate a thumbnail for this content: {error}"),
        ),
    }
}

fn too_large_to_decode() -> Error {
    Error::too_large("The image is too large to thumbnail.")
}

/// Reads the format, dimensions and orientation without decoding pixels, and refuses
/// images over the pixel budget.
fn read_header(path: &Path, budget: &Budget) -> Result<Header> {
    let mut reader = ImageReader::new(open(path)?).with_guessed_format()?;
    let format = match reader.format() {
        Some(
            format @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP),
        ) => format,
        _ => return Err(not_an_image()),
    };
    reader.limits(budget.limits());
    let mut decoder = reader.into_decoder().map_err(|error| undecodable(&error))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > budget.max_pixels || width == 0 || height == 0 {
        return Err(Error::too_large(format!(
            "The image is too large to thumbnail: {width}x{height} pixels, over this server's \
             limit of {} pixels.",
            budget.max_pixels
        )));
    }
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    drop(decoder);
    let (width, height) = match orientation {
        Orientation::Rotate90
        | Orientation::Rotate270
        | Orientation::Rotate90FlipH
        | Orientation::Rotate270FlipH => (height, width),
        _ => (width, height),
    };
    let animated = match format {
        // A GIF says how many frames it has only by decoding them; treat every GIF as
        // possibly animated (the cost is re-encoding small still GIFs).
        ImageFormat::Gif => true,
        ImageFormat::WebP => {
            WebPDecoder::new(open(path)?).map_err(|error| undecodable(&error))?.has_animation()
        }
        ImageFormat::Png => {
            PngDecoder::new(open(path)?).and_then(|png| png.is_apng()).unwrap_or(false)
        }
        _ => false,
    };
    Ok(Header { format, width, height, orientation, animated })
}

/// A still thumbnail: the first frame, oriented, resized, re-encoded.
fn still(path: &Path, header: &Header, plan: Plan, budget: &Budget) -> Result<Outcome> {
    let mut reader = ImageReader::new(open(path)?).with_guessed_format()?;
    reader.limits(budget.limits());
    let decoder = reader.into_decoder().map_err(|error| undecodable(&error))?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(|error| undecodable(&error))?;
    image.apply_orientation(header.orientation);
    let image = resize(&image, plan);
    let (width, height) = (image.width(), image.height());
    let mut bytes = Vec::new();
    // Photographs stay JPEG (much smaller); everything else, and anything with
    // transparency, becomes PNG.
    let content_type = if header.format == ImageFormat::Jpeg && !image.color().has_alpha() {
        let encoder = JpegEncoder::new_with_quality(&mut bytes, 85);
        image.to_rgb8().write_with_encoder(encoder).map_err(|error| undecodable(&error))?;
        "image/jpeg"
    } else {
        image
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .map_err(|error| undecodable(&error))?;
        "image/png"
    };
    Ok(Outcome::Generated { bytes, content_type, width, height })
}

/// An animated GIF thumbnail; `None` when the source has a single frame after all.
fn animated(path: &Path, header: &Header, plan: Plan, budget: &Budget) -> Result<Option<Outcome>> {
    let mut limits = budget.limits();
    // Frames are decoded one at a time; the limit applies to each.
    limits.max_alloc = limits.max_alloc.map(|bytes| bytes.saturating_mul(2));
    let frames = match header.format {
        ImageFormat::Gif => {
            let mut decoder = GifDecoder::new(open(path)?).map_err(|error| undecodable(&error))?;
            decoder.set_limits(limits).map_err(|error| undecodable(&error))?;
            decoder.into_frames()
        }
        ImageFormat::WebP => {
            let mut decoder = WebPDecoder::new(open(path)?).map_err(|error| undecodable(&error))?;
            decoder.set_limits(limits).map_err(|error| undecodable(&error))?;
            decoder.into_frames()
        }
        ImageFormat::Png => {
            let mut decoder = PngDecoder::new(open(path)?).map_err(|error| undecodable(&error))?;
            decoder.set_limits(limits).map_err(|error| undecodable(&error))?;
            decoder.apng().map_err(|error| undecodable(&error))?.into_frames()
        }
        _ => return Ok(None),
    };
    // Every frame costs a full canvas: share the pixel budget between them.
    let canvas = u64::from(header.width) * u64::from(header.height);
    let affordable = usize::try_from(budget.max_pixels / canvas.max(1)).unwrap_or(usize::MAX);
    let most = budget.max_frames.min(affordable).max(1);
    let mut resized = Vec::new();
    for frame in frames.take(most) {
        let frame = frame.map_err(|error| undecodable(&error))?;
        let delay = frame.delay();
        let image = resize(&DynamicImage::ImageRgba8(frame.into_buffer()), plan).to_rgba8();
        resized.push(image::Frame::from_parts(image, 0, 0, delay));
    }
    if resized.len() < 2 {
        return Ok(None);
    }
    let (width, height) = resized[0].buffer().dimensions();
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut bytes);
        encoder.set_repeat(Repeat::Infinite).map_err(|error| undecodable(&error))?;
        encoder.encode_frames(resized).map_err(|error| undecodable(&error))?;
    }
    Ok(Some(Outcome::Generated { bytes, content_type: "image/gif", width, height }))
}

fn resize(image: &DynamicImage, plan: Plan) -> DynamicImage {
    match plan {
        Plan::Original => image.clone(),
        Plan::Resize { width, height, crop: false } => {
            image.resize_exact(width, height, FilterType::Triangle)
        }
        Plan::Resize { width, height, crop: true } => {
            image.resize_to_fill(width, height, FilterType::Triangle)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_covering_size_is_chosen() {
        let size = |width, height, method| {
            choose(width, height, method).map(|s| (s.width, s.height, s.method))
        };
        assert_eq!(size(10, 10, Method::Crop), Some((32, 32, Method::Crop)));
        assert_eq!(size(32, 32, Method::Crop), Some((32, 32, Method::Crop)));
        assert_eq!(size(33, 20, Method::Crop), Some((96, 96, Method::Crop)));
        assert_eq!(size(64, 64, Method::Scale), Some((320, 240, Method::Scale)));
        assert_eq!(size(320, 241, Method::Scale), Some((640, 480, Method::Scale)));
        // No crop size is big enough: a scale size that covers the request.
        assert_eq!(size(200, 200, Method::Crop), Some((320, 240, Method::Scale)));
        assert_eq!(size(800, 600, Method::Scale), Some((800, 600, Method::Scale)));
        assert_eq!(size(801, 600, Method::Scale), None);
    }

    #[test]
    fn plans_never_upscale() {
        let scale = Size { width: 320, height: 240, method: Method::Scale };
        let crop = Size { width: 96, height: 96, method: Method::Crop };
        assert_eq!(plan(100, 100, scale), Plan::Original);
        assert_eq!(plan(640, 480, scale), Plan::Resize { width: 320, height: 240, crop: false });
        assert_eq!(plan(1000, 250, scale), Plan::Resize { width: 320, height: 80, crop: false });
        assert_eq!(plan(250, 1000, scale), Plan::Resize { width: 60, height: 240, crop: false });
        assert_eq!(plan(400, 300, crop), Plan::Resize { width: 96, height: 96, crop: true });
        assert_eq!(plan(50, 300, crop), Plan::Resize { width: 50, height: 96, crop: true });
        assert_eq!(plan(90, 90, crop), Plan::Original);
        assert_eq!(plan(4000, 1, scale), Plan::Resize { width: 320, height: 1, crop: false });
    }

    #[test]
    fn keys_name_size_method_and_animation() {
        let request = Request { size: Some(SIZES[2]), animated: false };
        assert_eq!(request.key(), "320x240-scale");
        let request = Request { size: Some(SIZES[0]), animated: true };
        assert_eq!(request.key(), "32x32-crop-animated");
        let request = Request { size: None, animated: false };
        assert_eq!(request.key(), "original");
    }
}
