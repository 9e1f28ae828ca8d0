//! The sample news site that `onair demo` origins serve: a small bilingual
//! (Vietnamese / English) national news portal, generated in code, whose
//! responses carry the cache headers a real newsroom CMS would send, so the
//! edge has something realistic to cache, revalidate, purge and fail over.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};

/// Front pages change often in a newsroom; stale-while-revalidate keeps them
/// instant while a refresh is in flight, stale-if-error keeps them up for a
/// day if every origin is down.
const CC_HOME: &str = "public, max-age=30, stale-while-revalidate=30, stale-if-error=86400";
/// Articles rarely change once published, so they may be served stale for a
/// week during an outage.
const CC_ARTICLE: &str = "public, max-age=60, stale-if-error=604800";
/// Short, so a story published right after a miss becomes visible quickly.
const CC_NOT_FOUND: &str = "public, max-age=10";
const CC_STYLE: &str = "public, max-age=86400, immutable";
const CC_LOGO: &str = "public, max-age=86400";
const CC_NO_STORE: &str = "no-store";
const CC_REDIRECT: &str = "public, max-age=3600";

const CT_HTML: &str = "text/html; charset=utf-8";
const CT_TEXT: &str = "text/plain; charset=utf-8";

/// Every request to `/api/live` must look different, as a real ticker would.
static LIVE_SEQUENCE: AtomicU64 = AtomicU64::new(0);

struct Article {
    slug: &'static str,
    /// An HTTP-date; fixed so that conditional requests behave the same on
    /// every run and on both origins.
    last_modified: &'static str,
    section_vi: &'static str,
    section_en: &'static str,
    title_vi: &'static str,
    title_en: &'static str,
    paragraphs_vi: &'static [&'static str],
    paragraphs_en: &'static [&'static str],
}

const ARTICLES: &[Article] = &[
    Article {
        slug: "ket-qua-bau-cu",
        last_modified: "Mon, 03 Mar 2025 06:00:00 GMT",
        section_vi: "Thời sự",
        section_en: "News",
        title_vi: "Công bố kết quả bầu cử sơ bộ",
        title_en: "Preliminary election results announced",
        paragraphs_vi: &[
            "Hội đồng bầu cử đã công bố kết quả sơ bộ sau khi hoàn tất kiểm phiếu tại phần lớn các điểm bỏ phiếu trên cả nước.",
            "Tỷ lệ cử tri đi bầu được ghi nhận ở mức cao. Kết quả chính thức sẽ được công bố sau khi các tổ bầu cử gửi đủ biên bản.",
            "Theo dõi số liệu kiểm phiếu trực tiếp tại trang cập nhật liên tục của chúng tôi.",
        ],
        paragraphs_en: &[
            "The election council has announced preliminary results after counting finished at most polling stations across the country.",
            "Turnout was reported to be high. Official results will follow once every polling team has submitted its minutes.",
            "Follow the live count on our continuously updated ticker.",
        ],
    },
    Article {
        slug: "hop-bao-chinh-phu",
        last_modified: "Sun, 02 Mar 2025 14:15:00 GMT",
        section_vi: "Chính trị",
        section_en: "Politics",
        title_vi: "Họp báo Chính phủ thường kỳ tháng Ba",
        title_en: "Regular government press conference for March",
        paragraphs_vi: &[
            "Người phát ngôn của Chính phủ đã trả lời câu hỏi của phóng viên về tình hình kinh tế - xã hội trong tháng.",
            "Các bộ, ngành cũng thông tin về tiến độ giải ngân vốn đầu tư công và các biện pháp hỗ trợ doanh nghiệp.",
        ],
        paragraphs_en: &[
            "The government spokesperson answered reporters' questions on the month's economic and social situation.",
            "Ministries also reported on public investment disbursement and on measures to support businesses.",
        ],
    },
    Article {
        slug: "lich-phat-song",
        last_modified: "Sun, 02 Mar 2025 10:30:00 GMT",
        section_vi: "Truyền hình",
        section_en: "Television",
        title_vi: "Lịch phát sóng tối nay",
        title_en: "Tonight's broadcast schedule",
        paragraphs_vi: &[
            "19:00 — Chương trình Thời sự.",
            "20:10 — Phim truyện Việt Nam.",
            "21:30 — Bản tin quốc tế.",
            "22:00 — Thể thao cuối ngày.",
        ],
        paragraphs_en: &[
            "19:00 — Evening news.",
            "20:10 — Vietnamese feature film.",
            "21:30 — World bulletin.",
            "22:00 — Late sports round-up.",
        ],
    },
    Article {
        slug: "du-bao-thoi-tiet",
        last_modified: "Sat, 01 Mar 2025 08:00:00 GMT",
        section_vi: "Thời tiết",
        section_en: "Weather",
        title_vi: "Miền Bắc đón đợt không khí lạnh mới",
        title_en: "A new cold front reaches the North",
        paragraphs_vi: &[
            "Từ đêm nay, không khí lạnh tăng cường khiến nhiệt độ tại các tỉnh miền Bắc giảm từ 4 đến 6 độ C.",
            "Vùng núi cao có nơi rét đậm, rét hại; người dân cần chú ý giữ ấm cho trẻ nhỏ và người cao tuổi.",
        ],
        paragraphs_en: &[
            "From tonight, a reinforcing cold front will bring temperatures in the northern provinces down by 4 to 6 °C.",
            "Some high mountain areas will see severe cold; families should keep young children and the elderly warm.",
        ],
    },
];

const STYLE_CSS: &str = r#"/* onair demo — sample news portal */
body { margin: 0; font-family: system-ui, sans-serif; color: #1d1d1f; background: #fafaf7; line-height: 1.55; }
header { display: flex; align-items: center; gap: .75rem; padding: .75rem 1.25rem; background: #b3141b; color: #fff; }
header a { color: #fff; text-decoration: none; }
header nav { margin-left: auto; font-size: .9rem; }
main { max-width: 44rem; margin: 0 auto; padding: 1rem 1.25rem 2rem; }
h1 { font-size: 1.6rem; margin: .5rem 0; }
.en { color: #5f6368; font-style: italic; }
.section { text-transform: uppercase; font-size: .75rem; letter-spacing: .08em; color: #b3141b; }
ul.stories { list-style: none; padding: 0; }
ul.stories li { padding: .6rem 0; border-bottom: 1px solid #e4e4df; }
ul.stories a { font-weight: 600; color: #1d1d1f; }
footer { max-width: 44rem; margin: 0 auto; padding: 1rem 1.25rem; font-size: .8rem; color: #5f6368; border-top: 1px solid #e4e4df; }
"#;

const LOGO_SVG: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" width="96" height="24" viewBox="0 0 96 24" role="img" aria-label="onair"><rect width="96" height="24" rx="4" fill="#b3141b"/><circle cx="12" cy="12" r="5" fill="#fff"/><text x="24" y="17" font-family="sans-serif" font-size="14" font-weight="700" fill="#fff">ON AIR</text></svg>
"##;

/// Answers one request to the sample site as the origin called
/// `origin_name`. A query string on `path` is ignored.
pub fn respond(origin_name: &str, method: &Method, path: &str) -> Response<Bytes> {
    let head = *method == Method::HEAD;
    if !head && *method != Method::GET {
        let mut resp = finish(
            origin_name,
            StatusCode::METHOD_NOT_ALLOWED,
            CT_TEXT,
            CC_NO_STORE,
            "method not allowed\n",
            false,
        );
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }

    let path = path.split('?').next().unwrap_or(path);
    match path {
        "/" => finish(
            origin_name,
            StatusCode::OK,
            CT_HTML,
            CC_HOME,
            home_vi(origin_name),
            head,
        ),
        "/en/" => finish(
            origin_name,
            StatusCode::OK,
            CT_HTML,
            CC_HOME,
            home_en(origin_name),
            head,
        ),
        "/en" => {
            let mut resp = finish(
                origin_name,
                StatusCode::MOVED_PERMANENTLY,
                CT_TEXT,
                CC_REDIRECT,
                "moved to /en/\n",
                head,
            );
            resp.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static("/en/"));
            resp
        }
        "/static/style.css" => finish(
            origin_name,
            StatusCode::OK,
            "text/css; charset=utf-8",
            CC_STYLE,
            STYLE_CSS,
            head,
        ),
        "/static/logo.svg" => finish(
            origin_name,
            StatusCode::OK,
            "image/svg+xml",
            CC_LOGO,
            LOGO_SVG,
            head,
        ),
        "/api/live" => finish(
            origin_name,
            StatusCode::OK,
            "application/json",
            CC_NO_STORE,
            live_json(origin_name),
            head,
        ),
        "/healthz" => finish(
            origin_name,
            StatusCode::OK,
            CT_TEXT,
            CC_NO_STORE,
            "ok\n",
            head,
        ),
        _ => match path
            .strip_prefix("/news/")
            .and_then(|slug| ARTICLES.iter().find(|a| a.slug == slug))
        {
            Some(article) => article_response(origin_name, article, head),
            None => finish(
                origin_name,
                StatusCode::NOT_FOUND,
                CT_HTML,
                CC_NOT_FOUND,
                not_found(origin_name, path),
                head,
            ),
        },
    }
}

fn article_response(origin_name: &str, article: &Article, head: bool) -> Response<Bytes> {
    let body = article_page(origin_name, article);
    let etag = format!("\"{:016x}\"", fnv1a(body.as_bytes()));
    let mut resp = finish(origin_name, StatusCode::OK, CT_HTML, CC_ARTICLE, body, head);
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    headers.insert(
        header::LAST_MODIFIED,
        HeaderValue::from_static(article.last_modified),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("news article-{}", article.slug)) {
        headers.insert(HeaderName::from_static("surrogate-key"), v);
    }
    resp
}

/// Builds the response with the headers every answer carries. For HEAD the
/// body is dropped but Content-Length still tells the size a GET would get,
/// as RFC 9110 allows, so HEAD and GET agree on every header.
fn finish(
    origin_name: &str,
    status: StatusCode,
    content_type: &'static str,
    cache_control: &'static str,
    body: impl Into<Bytes>,
    head: bool,
) -> Response<Bytes> {
    let body: Bytes = body.into();
    let len = body.len();
    let mut resp = Response::new(if head { Bytes::new() } else { body });
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(
        HeaderName::from_static("x-origin"),
        HeaderValue::from_str(origin_name).unwrap_or(HeaderValue::from_static("unnamed")),
    );
    resp
}

/// A stable 64-bit FNV-1a hash: enough to give each body a distinct ETag
/// without pulling in a hashing crate, and identical across runs.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn page(lang: &str, title: &str, origin_name: &str, main: &str) -> String {
    let (home, nav) = if lang == "en" {
        ("/en/", r#"<a href="/" lang="vi">Tiếng Việt</a>"#)
    } else {
        ("/", r#"<a href="/en/" lang="en">English</a>"#)
    };
    format!(
        r#"<!doctype html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="/static/style.css">
</head>
<body>
<header><a href="{home}"><img src="/static/logo.svg" alt="onair" width="96" height="24"></a> <a href="{home}">Tin Tức Quốc Gia · National News</a><nav>{nav}</nav></header>
<main>
{main}</main>
<footer>
<p>Nội dung mẫu cho bản demo onair. · Sample content for the onair demo.</p>
<p>served by origin: <strong>{origin}</strong></p>
</footer>
</body>
</html>
"#,
        title = escape(title),
        origin = escape(origin_name),
    )
}

fn home_vi(origin_name: &str) -> String {
    let mut main = String::from(
        "<h1>Tin mới nhất</h1>\n<p class=\"en\" lang=\"en\">Latest news</p>\n<ul class=\"stories\">\n",
    );
    for a in ARTICLES {
        main.push_str(&format!(
            "<li><span class=\"section\">{}</span><br><a href=\"/news/{}\">{}</a><br><span class=\"en\" lang=\"en\">{}</span></li>\n",
            a.section_vi, a.slug, a.title_vi, a.title_en
        ));
    }
    main.push_str("</ul>\n<p><a href=\"/api/live\">Kết quả kiểm phiếu trực tiếp</a> <span class=\"en\" lang=\"en\">· Live count</span></p>\n");
    page("vi", "Tin Tức Quốc Gia", origin_name, &main)
}

fn home_en(origin_name: &str) -> String {
    let mut main = String::from("<h1>Latest news</h1>\n<ul class=\"stories\">\n");
    for a in ARTICLES {
        main.push_str(&format!(
            "<li><span class=\"section\">{}</span><br><a href=\"/news/{}\">{}</a></li>\n",
            a.section_en, a.slug, a.title_en
        ));
    }
    main.push_str("</ul>\n<p><a href=\"/api/live\">Live count</a></p>\n");
    page("en", "National News", origin_name, &main)
}

fn article_page(origin_name: &str, a: &Article) -> String {
    let mut main = format!(
        "<article>\n<p class=\"section\">{} · {}</p>\n<h1>{}</h1>\n<p class=\"en\" lang=\"en\">{}</p>\n<p><small>Cập nhật · Updated: {}</small></p>\n",
        a.section_vi, a.section_en, a.title_vi, a.title_en, a.last_modified
    );
    for p in a.paragraphs_vi {
        main.push_str(&format!("<p>{p}</p>\n"));
    }
    main.push_str("<section lang=\"en\" class=\"en\">\n");
    for p in a.paragraphs_en {
        main.push_str(&format!("<p>{p}</p>\n"));
    }
    main.push_str("</section>\n</article>\n<p><a href=\"/\">← Trang chủ</a> · <a href=\"/en/\">Home</a></p>\n");
    page("vi", a.title_vi, origin_name, &main)
}

fn not_found(origin_name: &str, path: &str) -> String {
    let main = format!(
        "<h1>Không tìm thấy trang</h1>\n<p class=\"en\" lang=\"en\">Page not found</p>\n<p><code>{}</code></p>\n<p><a href=\"/\">← Trang chủ</a> · <a href=\"/en/\">Home</a></p>\n",
        escape(path)
    );
    page("vi", "Không tìm thấy · Not found", origin_name, &main)
}

fn live_json(origin_name: &str) -> String {
    let sequence = LIVE_SEQUENCE.fetch_add(1, Ordering::Relaxed) + 1;
    let updated_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    const TOTAL_STATIONS: u64 = 1000;
    // The count creeps up with every request so a demo user can watch that
    // this endpoint is never served from cache.
    let counted = 400 + sequence % (TOTAL_STATIONS - 400 + 1);
    let mut body = serde_json::json!({
        "sequence": sequence,
        "updated_at_unix_ms": updated_at_ms,
        "origin": origin_name,
        "headline": {
            "vi": "Đang kiểm phiếu",
            "en": "Counting in progress",
        },
        "stations_counted": counted,
        "stations_total": TOTAL_STATIONS,
        "counted_percent": (counted * 1000 / TOTAL_STATIONS) as f64 / 10.0,
    })
    .to_string();
    body.push('\n');
    body
}

#[cfg(test)]
// Panicking on a broken fixture is the point of a test.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn header<'a>(resp: &'a Response<Bytes>, name: &str) -> &'a str {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[test]
    fn home_is_cacheable_and_names_origin() {
        let resp = respond("primary", &Method::GET, "/");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "cache-control"), CC_HOME);
        assert_eq!(header(&resp, "x-origin"), "primary");
        let body = std::str::from_utf8(resp.body()).unwrap();
        assert!(body.contains("served by origin: <strong>primary</strong>"));
        assert!(body.contains("href=\"/en/\""));
        assert!(body.contains("/news/ket-qua-bau-cu"));
    }

    #[test]
    fn article_has_validators_and_surrogate_key() {
        let resp = respond("backup", &Method::GET, "/news/hop-bao-chinh-phu?x=1");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "cache-control"), CC_ARTICLE);
        assert_eq!(
            header(&resp, "surrogate-key"),
            "news article-hop-bao-chinh-phu"
        );
        assert!(header(&resp, "etag").starts_with('"'));
        assert_eq!(
            header(&resp, "last-modified"),
            "Sun, 02 Mar 2025 14:15:00 GMT"
        );
        let again = respond("backup", &Method::GET, "/news/hop-bao-chinh-phu");
        assert_eq!(header(&resp, "etag"), header(&again, "etag"));
    }

    #[test]
    fn unknown_slug_is_short_lived_404() {
        let resp = respond("primary", &Method::GET, "/news/khong-co");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(header(&resp, "cache-control"), CC_NOT_FOUND);
    }

    #[test]
    fn head_matches_get_without_body() {
        let get = respond("primary", &Method::GET, "/static/style.css");
        let head = respond("primary", &Method::HEAD, "/static/style.css");
        assert!(head.body().is_empty());
        assert_eq!(get.headers(), head.headers());
        assert_eq!(
            header(&head, "content-length"),
            get.body().len().to_string()
        );
    }

    #[test]
    fn other_methods_are_405() {
        let resp = respond("primary", &Method::POST, "/");
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(header(&resp, "allow"), "GET, HEAD");
        assert_eq!(header(&resp, "x-origin"), "primary");
    }

    #[test]
    fn live_changes_every_request_and_is_no_store() {
        let a = respond("primary", &Method::GET, "/api/live");
        let b = respond("primary", &Method::GET, "/api/live");
        assert_eq!(header(&a, "cache-control"), "no-store");
        assert_ne!(a.body(), b.body());
        let v: serde_json::Value = serde_json::from_slice(a.body()).unwrap();
        assert_eq!(v["origin"], "primary");
    }
}
