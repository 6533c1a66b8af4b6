# mode = "scaled" planned against a mocked AWS provider (no cloud account is reachable from tests):
# load balancer, launch template and Auto Scaling Group, and the settings that only fit this mode.

mock_provider "aws" {
  source          = "./tests/mocks"
  override_during = plan # mocked ids and addresses are known in the plan, so outputs can be checked
}

variables {
  mode     = "scaled"
  repo_url = "https://git.example.com/team/modelstack.git"
  git_ref  = "v1.2.0"
}

override_resource {
  target          = aws_security_group.instance
  override_during = plan
  values          = { id = "sg-0instance" }
}

override_resource {
  target          = aws_security_group.alb
  override_during = plan
  values          = { id = "sg-0alb" }
}

run "load_balancer_in_front_of_an_auto_scaling_group" {
  command = plan

  assert {
    condition = alltrue([
      aws_lb.web[0].load_balancer_type == "application", !aws_lb.web[0].internal,
      aws_lb.web[0].security_groups == toset(["sg-0alb"]),
      aws_lb.web[0].subnets == toset(["subnet-0aaaaaaaaaaaaaaaa", "subnet-0bbbbbbbbbbbbbbbb", "subnet-0cccccccccccccccc"]),
      aws_lb.web[0].drop_invalid_header_fields,
    ])
    error_message = "A public Application Load Balancer must span the default VPC's subnets."
  }
  assert {
    condition = alltrue([
      aws_lb_target_group.web[0].port == 80, aws_lb_target_group.web[0].protocol == "HTTP",
      aws_lb_target_group.web[0].health_check[0].path == "/readyz",
      aws_lb_target_group.web[0].health_check[0].matcher == "200",
    ])
    error_message = "The target group must send HTTP to port 80 and health-check /readyz for a 200."
  }
  assert {
    condition = alltrue([
      aws_lb_listener.http[0].port == 80, aws_lb_listener.http[0].protocol == "HTTP",
      aws_lb_listener.http[0].default_action[0].type == "forward",
      aws_lb_listener.http[0].default_action[0].target_group_arn == "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/modelstack-web/0123456789abcdef",
      length(aws_lb_listener.https) == 0,
    ])
    error_message = "Without a certificate the load balancer must serve plain HTTP only."
  }
  assert {
    condition = alltrue([
      aws_autoscaling_group.web[0].min_size == 2, aws_autoscaling_group.web[0].max_size == 4,
      aws_autoscaling_group.web[0].desired_capacity == 2,
      aws_autoscaling_group.web[0].health_check_type == "ELB",
      aws_autoscaling_group.web[0].target_group_arns == toset(["arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/modelstack-web/0123456789abcdef"]),
      length(aws_autoscaling_group.web[0].vpc_zone_identifier) == 3,
    ])
    error_message = "The Auto Scaling Group must run 2 (2-4) instances in every subnet, registered with the target group and replaced when /readyz fails."
  }
  assert {
    condition = alltrue([
      aws_autoscaling_policy.cpu[0].policy_type == "TargetTrackingScaling",
      aws_autoscaling_policy.cpu[0].target_tracking_configuration[0].predefined_metric_specification[0].predefined_metric_type == "ASGAverageCPUUtilization",
      aws_autoscaling_policy.cpu[0].target_tracking_configuration[0].target_value == 60,
    ])
    error_message = "The group must track 60% average CPU."
  }
  assert {
    condition     = aws_autoscaling_group.web[0].instance_refresh[0].strategy == "Rolling"
    error_message = "A new launch template version must roll through the group."
  }
  assert {
    condition = alltrue([
      aws_launch_template.web[0].image_id == "ami-0123456789abcdef0",
      aws_launch_template.web[0].instance_type == "t3.small",
      aws_launch_template.web[0].metadata_options[0].http_tokens == "required",
      aws_launch_template.web[0].iam_instance_profile[0].arn == "arn:aws:iam::123456789012:instance-profile/modelstack-instance-20250101000000000000000002",
      aws_launch_template.web[0].vpc_security_group_ids == toset(["sg-0instance"]),
    ])
    error_message = "The launch template must use the looked-up image, require IMDSv2 and carry the SSM profile and the instance security group."
  }
  assert {
    condition = [
      for disk in aws_launch_template.web[0].block_device_mappings :
      [disk.device_name, one(disk.ebs).volume_type, one(disk.ebs).encrypted, one(disk.ebs).volume_size]
    ] == [["/dev/xvda", "gp3", "true", 20]]
    error_message = "The launch template's root volume must be an encrypted 20 GiB gp3 volume."
  }
  assert {
    condition = yamldecode(base64decode(aws_launch_template.web[0].user_data)).runcmd == [
      "set -e",
      ["curl", "-fsSL", "--retry", "5", "-o", "/run/amazon-ssm-agent.deb", "https://s3.us-east-1.amazonaws.com/amazon-ssm-us-east-1/latest/debian_amd64/amazon-ssm-agent.deb"],
      ["dpkg", "-i", "/run/amazon-ssm-agent.deb"],
      ["git", "clone", "https://git.example.com/team/modelstack.git", "/opt/modelstack"],
      ["git", "-C", "/opt/modelstack", "checkout", "v1.2.0"],
      ["env", "API_KEYS=off", "TRUSTED_PROXIES=172.31.0.0/16", "/opt/modelstack/deploy/install.sh"],
    ]
    error_message = "Instances must install the same way as the single VM, trust X-Forwarded-For from inside the VPC and leave API keys off (a key generated per instance would work on that instance only)."
  }
  assert {
    condition = {
      for key, rule in aws_vpc_security_group_ingress_rule.public :
      key => "${rule.security_group_id} ${rule.from_port} ${rule.cidr_ipv4}"
    } == { "http from 0.0.0.0/0" = "sg-0alb 80 0.0.0.0/0" }
    error_message = "Only the load balancer may take traffic from the internet, on HTTP alone without a certificate."
  }
  assert {
    condition = alltrue([
      aws_vpc_security_group_ingress_rule.from_alb[0].security_group_id == "sg-0instance",
      aws_vpc_security_group_ingress_rule.from_alb[0].referenced_security_group_id == "sg-0alb",
      aws_vpc_security_group_ingress_rule.from_alb[0].from_port == 80,
      aws_vpc_security_group_ingress_rule.from_alb[0].to_port == 80,
      aws_vpc_security_group_egress_rule.alb_to_instances[0].referenced_security_group_id == "sg-0instance",
    ])
    error_message = "The instances must take HTTP from the load balancer's security group only."
  }
  assert {
    condition     = length(aws_instance.web) == 0 && length(aws_eip.web) == 0 && length(aws_network_interface.web) == 0
    error_message = "Scaled mode must create no stand-alone VM or Elastic IP."
  }
  assert {
    condition = alltrue([
      output.url == "http://modelstack-alb-123456789.us-east-1.elb.amazonaws.com",
      output.instance_id == null,
      output.autoscaling_group_name == "modelstack-20250101000000000000000001",
      strcontains(output.connect, "--auto-scaling-group-names modelstack-20250101000000000000000001"),
    ])
    error_message = "The outputs must point at the load balancer and the group; got ${output.url}."
  }
  assert {
    condition = {
      for tag in aws_autoscaling_group.web[0].tag : tag.key => tag.value if tag.propagate_at_launch
    } == { Application = "modelstack", ManagedBy = "terraform", Name = "modelstack", Stack = "modelstack" }
    error_message = "Instances launched by the group must carry the stack's tags."
  }
}

run "certificate_adds_https_and_redirects_http" {
  command = plan

  variables {
    domain          = "models.example.com"
    certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-1111-2222-3333-444455556666"
    min_size        = 3
    max_size        = 10
    cpu_target      = 45
  }

  assert {
    condition = alltrue([
      aws_lb_listener.https[0].port == 443, aws_lb_listener.https[0].protocol == "HTTPS",
      aws_lb_listener.https[0].certificate_arn == "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-1111-2222-3333-444455556666",
      startswith(aws_lb_listener.https[0].ssl_policy, "ELBSecurityPolicy-TLS13-1-2"),
      aws_lb_listener.https[0].default_action[0].type == "forward",
    ])
    error_message = "A certificate must add an HTTPS listener with a TLS 1.2+ policy."
  }
  assert {
    condition = alltrue([
      aws_lb_listener.http[0].default_action[0].type == "redirect",
      aws_lb_listener.http[0].default_action[0].redirect[0].protocol == "HTTPS",
      aws_lb_listener.http[0].default_action[0].redirect[0].port == "443",
    ])
    error_message = "With a certificate, HTTP must redirect to HTTPS."
  }
  assert {
    condition     = sort([for rule in aws_vpc_security_group_ingress_rule.public : "${rule.security_group_id} ${rule.from_port}"]) == tolist(["sg-0alb 443", "sg-0alb 80"])
    error_message = "The load balancer must open 80 and 443."
  }
  assert {
    condition     = output.url == "https://models.example.com"
    error_message = "With a certificate the URL is HTTPS on the domain; got ${output.url}."
  }
  assert {
    condition = alltrue([
      aws_autoscaling_group.web[0].min_size == 3, aws_autoscaling_group.web[0].max_size == 10,
      aws_autoscaling_group.web[0].desired_capacity == 3,
      aws_autoscaling_policy.cpu[0].target_tracking_configuration[0].target_value == 45,
    ])
    error_message = "Group size and CPU target must follow the variables."
  }
  assert {
    # TLS ends at the load balancer: the instances must not run certbot.
    condition     = !strcontains(base64decode(aws_launch_template.web[0].user_data), "DOMAIN=")
    error_message = "Instances behind the load balancer must not request certificates."
  }
}

run "too_few_default_subnets_are_reported" {
  command = plan

  override_data {
    target = data.aws_subnets.default[0]
    values = { ids = ["subnet-0aaaaaaaaaaaaaaaa"] }
  }

  expect_failures = [data.aws_subnets.default[0]]
}

run "one_given_subnet_is_rejected" {
  command = plan

  variables {
    subnet_ids = ["subnet-0aaaaaaaaaaaaaaaa"]
  }

  expect_failures = [var.subnet_ids]
}

run "certbot_email_is_rejected" {
  command = plan

  variables {
    domain          = "models.example.com"
    email           = "ops@example.com"
    certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-1111-2222-3333-444455556666"
  }

  expect_failures = [var.email]
}

run "certificate_without_domain_is_rejected" {
  command = plan

  variables {
    certificate_arn = "arn:aws:acm:us-east-1:123456789012:certificate/0a1b2c3d-1111-2222-3333-444455556666"
  }

  expect_failures = [var.certificate_arn]
}

run "desired_above_max_is_rejected" {
  command = plan

  variables {
    max_size         = 3
    desired_capacity = 5
  }

  expect_failures = [var.desired_capacity]
}
