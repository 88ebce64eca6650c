//! Guards the S3 test server itself (no Warden binaries needed): it starts with credentials
//! enforced, since without `-s3.config` SeaweedFS lets anyone in and an S3 client that signs
//! wrongly would pass every test; and its fresh bucket holds nothing.

use std::time::Duration;

use warden_tests::http::http_get;
use warden_tests::s3::S3Server;

#[test]
fn starts_with_credentials_enforced_and_an_empty_bucket() {
    let Some(s3) = S3Server::start() else {
        return;
    };
    for path in ["/".to_owned(), format!("/{}/", s3.bucket())] {
        let url = format!("{}{path}", s3.endpoint());
        let response = http_get(&url, Duration::from_secs(10)).expect("S3 answers");
        assert_eq!(
            response.status, 403,
            "unsigned GET {url} must be refused: {}",
            response.body
        );
    }
    assert_eq!(s3.list_objects(s3.bucket()), Vec::<String>::new());
    assert_eq!(s3.incomplete_uploads(s3.bucket()), Vec::<String>::new());
}
