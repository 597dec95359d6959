//! EC2 XML responses, decoded with quick-xml's serde support (unknown elements are ignored).

use serde::Deserialize;

/// EC2's `<xxxSet><item>…</item></xxxSet>` lists.
#[derive(Clone, Debug, Deserialize)]
#[serde(bound = "T: Deserialize<'de>")]
pub struct Items<T> {
    #[serde(default = "Vec::new")]
    pub item: Vec<T>,
}

impl<T> Default for Items<T> {
    fn default() -> Self {
        Items { item: Vec::new() }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeInstances {
    #[serde(default)]
    pub reservation_set: Items<Reservation>,
    #[serde(default)]
    pub next_token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    #[serde(default)]
    pub instances_set: Items<Instance>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunInstances {
    #[serde(default)]
    pub instances_set: Items<Instance>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    #[serde(default)]
    pub instance_id: String,
    #[serde(default)]
    pub image_id: String,
    #[serde(default)]
    pub instance_type: String,
    #[serde(default)]
    pub instance_state: InstanceState,
    #[serde(default)]
    pub private_dns_name: Option<String>,
    #[serde(default)]
    pub private_ip_address: Option<String>,
    #[serde(default)]
    pub ip_address: Option<String>,
    #[serde(default)]
    pub dns_name: Option<String>,
    #[serde(default)]
    pub source_dest_check: Option<bool>,
    #[serde(default)]
    pub tag_set: Items<Tag>,
    #[serde(default)]
    pub block_device_mapping: Items<BlockDevice>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct InstanceState {
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Tag {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockDevice {
    #[serde(default)]
    pub device_name: String,
    #[serde(default)]
    pub ebs: Option<EbsRef>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EbsRef {
    #[serde(default)]
    pub volume_id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeImages {
    #[serde(default)]
    pub images_set: Items<Image>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    #[serde(default)]
    pub image_id: String,
    #[serde(default)]
    pub root_device_name: Option<String>,
}

/// `<Response><Errors><Error><Code/><Message/></Error></Errors><RequestID/></Response>`
#[derive(Debug, Default, Deserialize)]
pub struct ErrorResponse {
    #[serde(rename = "Errors", default)]
    pub errors: ErrorList,
    #[serde(rename = "RequestID", alias = "RequestId", default)]
    pub request_id: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct ErrorList {
    #[serde(rename = "Error", default)]
    pub error: Vec<AwsError>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct AwsError {
    #[serde(rename = "Code", default)]
    pub code: String,
    #[serde(rename = "Message", default)]
    pub message: String,
}

impl Instance {
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tag_set
            .item
            .iter()
            .find(|t| t.key == key)
            .map(|t| t.value.as_str())
    }
    pub fn private_dns_name(&self) -> &str {
        self.private_dns_name.as_deref().unwrap_or("")
    }
}

impl DescribeInstances {
    pub fn instances(self) -> impl Iterator<Item = Instance> {
        self.reservation_set
            .item
            .into_iter()
            .flat_map(|r| r.instances_set.item)
    }
}

pub fn parse<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, String> {
    quick_xml::de::from_str(body).map_err(|e| e.to_string())
}

/// The first error of an EC2 error body (also accepts the `<ErrorResponse><Error>` shape of
/// other AWS query services); `None` when the body is not such XML.
pub fn parse_error(body: &str) -> Option<AwsError> {
    if let Ok(r) = parse::<ErrorResponse>(body)
        && let Some(e) = r.errors.error.into_iter().next()
    {
        return Some(e);
    }
    #[derive(Deserialize)]
    struct Other {
        #[serde(rename = "Error")]
        error: AwsError,
    }
    parse::<Other>(body)
        .ok()
        .map(|o| o.error)
        .filter(|e| !e.code.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESCRIBE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>fdcdcab1-ae5c-489e-9c33-4637c5dda355</requestId>
  <reservationSet>
    <item>
      <reservationId>r-1234567890abcdef0</reservationId>
      <ownerId>123456789012</ownerId>
      <groupSet/>
      <instancesSet>
        <item>
          <instanceId>i-1234567890abcdef0</instanceId>
          <imageId>ami-bff32ccc</imageId>
          <instanceState><code>16</code><name>running</name></instanceState>
          <privateDnsName>ip-192-168-1-88.eu-west-1.compute.internal</privateDnsName>
          <dnsName/>
          <instanceType>t2.micro</instanceType>
          <privateIpAddress>192.168.1.88</privateIpAddress>
          <sourceDestCheck>true</sourceDestCheck>
          <blockDeviceMapping>
            <item><deviceName>/dev/xvda</deviceName><ebs><volumeId>vol-1234567890abcdef0</volumeId><status>attached</status></ebs></item>
          </blockDeviceMapping>
          <tagSet>
            <item><key>Name</key><value>m1</value></item>
            <item><key>kubernetes.io/cluster/c</key><value>1</value></item>
          </tagSet>
        </item>
      </instancesSet>
    </item>
  </reservationSet>
  <nextToken>abc</nextToken>
</DescribeInstancesResponse>"#;

    #[test]
    fn describe_instances() {
        let d: DescribeInstances = parse(DESCRIBE).unwrap();
        assert_eq!(d.next_token.as_deref(), Some("abc"));
        let all: Vec<Instance> = d.instances().collect();
        assert_eq!(all.len(), 1);
        let i = &all[0];
        assert_eq!(i.instance_id, "i-1234567890abcdef0");
        assert_eq!(i.instance_state.name, "running");
        assert_eq!(
            i.private_dns_name(),
            "ip-192-168-1-88.eu-west-1.compute.internal"
        );
        assert_eq!(i.tag("Name"), Some("m1"));
        assert_eq!(i.source_dest_check, Some(true));
        assert_eq!(
            i.block_device_mapping.item[0]
                .ebs
                .as_ref()
                .unwrap()
                .volume_id,
            "vol-1234567890abcdef0"
        );
    }

    #[test]
    fn empty_sets() {
        let d: DescribeInstances = parse(
            r#"<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>x</requestId><reservationSet/></DescribeInstancesResponse>"#,
        )
        .unwrap();
        assert_eq!(d.instances().count(), 0);
        assert!(d_none_token());
        fn d_none_token() -> bool {
            parse::<DescribeInstances>("<DescribeInstancesResponse><reservationSet></reservationSet></DescribeInstancesResponse>")
                .unwrap()
                .next_token
                .is_none()
        }
    }

    #[test]
    fn images_and_errors() {
        let i: DescribeImages = parse(
            "<DescribeImagesResponse><imagesSet><item><imageId>ami-1</imageId><rootDeviceName>/dev/sda1</rootDeviceName></item></imagesSet></DescribeImagesResponse>",
        )
        .unwrap();
        assert_eq!(
            i.images_set.item[0].root_device_name.as_deref(),
            Some("/dev/sda1")
        );
        let e = parse_error(
            "<?xml version=\"1.0\"?><Response><Errors><Error><Code>InvalidInstanceID.NotFound</Code><Message>The instance ID 'i-1' does not exist</Message></Error></Errors><RequestID>r</RequestID></Response>",
        )
        .unwrap();
        assert_eq!(e.code, "InvalidInstanceID.NotFound");
        assert!(e.message.contains("i-1"));
        let e = parse_error("<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error></ErrorResponse>").unwrap();
        assert_eq!(e.code, "Throttling");
        assert_eq!(parse_error("<html>bad gateway</html>"), None);
        assert_eq!(parse_error("upstream connect error"), None);
    }
}
